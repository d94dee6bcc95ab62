//! Running a built machine: one thread per vCPU, and a main loop (on a
//! thread of its own) that waits for an exit, a crash, the timeout or a
//! request from a `VmHandle`, then stops every vCPU.
//!
//! vCPU threads hand what the VMM must act on to the main loop through a
//! bounded channel: a guest that sends records faster than they are consumed
//! is held up in its `out` instruction (back-pressure), and the VMM's memory
//! does not grow. The main loop never waits on an output: a record the
//! observer cannot take yet is kept and offered again, and meanwhile the
//! loop stops reading from the vCPUs (so they wait) but goes on serving
//! requests, and checks the deadline on every turn, so nothing a guest or a
//! reader does can outlast `--timeout`.
//!
//! Stopping: the main loop sets the stop mode and sends a real-time signal to
//! each vCPU thread until it has left `KVM_RUN` and returned, draining the
//! channel meanwhile so that a thread blocked on a full channel gets to see
//! the mode. Repeating the signal covers the window in which a thread checked
//! the mode but had not yet entered the guest when the first signal arrived.

mod control;
mod exits;
mod run_state;
mod vcpu_loop;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, never, select};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

pub use control::{Control, ControlError, PauseInfo, VmHandle, VmState, VmStatus};

use crate::builder::Machine;
use crate::devices::GuestEvent;
use crate::devices::PortDevices;
use crate::devices::records::{Record, RecordError};
use crate::dirty::{ProcessInfo, WriteWatch};
use crate::migration::state::MachineState;
use crate::vstate::regs::RegisterDump;
use crate::vstate::vm_state;
use crate::workload::Announced;
use exits::ExitCounters;
use run_state::{RunState, THROTTLE_SLICE};
use vcpu_loop::{ParkedTask, VcpuContext, VcpuMessage, VcpuReport, vcpu_loop};

/// Offset from SIGRTMIN of the signal that kicks a vCPU out of `KVM_RUN`.
const KICK_SIGNAL_OFFSET: i32 = 0;
/// Messages the vCPU threads may have queued for the main loop. Each is at
/// most one record (64 KiB), so this bounds the queue to about 1 MiB.
const CHANNEL_CAPACITY: usize = 16;
/// How often a record the observer refused is offered again.
const RETRY: Duration = Duration::from_millis(10);
/// How long saving the machine state may wait for a vCPU thread.
const SAVE_WAIT: Duration = Duration::from_secs(10);

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum StopReason {
    /// The guest wrote this value to the exit device.
    GuestExit(u32),
    /// `--timeout` expired.
    Timeout,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault { vcpu: u32 },
    /// KVM could not run a vCPU: internal error, failed entry, or an exit
    /// writewatch does not handle.
    KvmFailure { vcpu: u32, detail: String },
    /// The VMM received this signal (SIGINT, SIGTERM).
    Signal(i32),
    /// A controller (`watch`, the API) ended the run; the text says why.
    Requested(String),
    /// The guest now runs in another VMM (the migration's destination).
    Migrated(String),
}

/// What the main loop tells the caller's side about records.
pub trait Observer: Send + 'static {
    /// A well-formed record, in arrival order. Returns false when it cannot
    /// be taken now (an output is full): it is offered again later, and no
    /// later record is offered before it. With `last_chance` (the VM has
    /// stopped) the observer must take it or count it lost.
    fn record(&mut self, record: &Record, last_chance: bool) -> bool;
    /// A record the guest sent that is not well-formed.
    fn bad_record(&mut self, error: &RecordError);
}

/// What a guest kernel says of itself in its `ready` record; short words
/// only (anything else a guest sends there is ignored).
#[derive(Clone, Debug, Default)]
pub struct GuestKernel {
    pub platform: Option<String>,
    pub kernel_mode: Option<String>,
}

impl GuestKernel {
    fn from_ready(line: &[u8]) -> Self {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            return GuestKernel::default();
        };
        let word = |key: &str| {
            value[key]
                .as_str()
                .filter(|w| w.len() <= 32 && w.bytes().all(|b| b.is_ascii_graphic()))
                .map(str::to_string)
        };
        GuestKernel {
            platform: word("platform"),
            kernel_mode: word("kernel_mode"),
        }
    }
}

/// Everything a run produced besides console output.
pub struct RunOutcome {
    pub reason: StopReason,
    pub dumps: Vec<RegisterDump>,
    pub exits: BTreeMap<&'static str, u64>,
    pub first_output: Option<Instant>,
    pub ready: Option<Instant>,
    /// What the `ready` record said of the guest kernel: its platform and
    /// where it runs its kernel work (GUEST_ABI.md, "Records").
    pub guest_kernel: GuestKernel,
    pub records: u64,
    pub bad_records: u64,
    pub tsc_khz: Option<u32>,
    /// The VM and its memory, still alive: the host kernel takes ~16 ms to
    /// destroy a VM on kvm_pvm, so the caller drops this after its output.
    pub remains: Remains,
}

/// What is left of a machine after its vCPUs have stopped.
pub struct Remains {
    _watch: Arc<WriteWatch>,
    _memory: crate::memory::GuestMemoryMmap,
}

/// A VM whose vCPUs are running.
pub struct Running<O> {
    handle: VmHandle,
    main: JoinHandle<(RunOutcome, O)>,
}

impl<O: Observer> Running<O> {
    pub fn handle(&self) -> VmHandle {
        self.handle.clone()
    }

    /// Waits for the run to end; gives back the observer.
    pub fn wait(self) -> (RunOutcome, O) {
        match self.main.join() {
            Ok(done) => done,
            // The main loop does not panic; if it did, the panic hook has
            // already reported it and ended the process.
            Err(_) => std::process::exit(crate::exit_status::VMM_ERROR.into()),
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Starts `machine`: its vCPU threads and its main loop. `timeout` bounds
/// the run; `observer` sees every record; each of `subscriptions` gets the
/// records of its type from the very first (see `VmHandle::subscribe` for
/// later ones).
pub fn start<O: Observer>(
    machine: Machine,
    timeout: Option<Duration>,
    observer: O,
    subscriptions: Vec<(String, Sender<Record>)>,
) -> Running<O> {
    let (control_tx, control_rx) = bounded(64);
    let handle = VmHandle {
        control: control_tx,
        watch: machine.watch.clone(),
        memory: machine.memory.clone(),
        started: Instant::now(),
        ended: Arc::new(AtomicBool::new(false)),
        workload: Arc::new(Mutex::new(machine.facts.workload.clone())),
    };
    for process in &machine.facts.processes {
        machine.watch.note_process(Some(process.clone()), None);
    }
    let deadline = timeout.map(|t| handle.started + t);
    let main_handle = handle.clone();
    let main = thread::Builder::new()
        .name("vmm".into())
        .spawn(move || {
            MainLoop::run(
                machine,
                deadline,
                control_rx,
                observer,
                main_handle,
                subscriptions,
            )
        })
        .unwrap_or_else(|e| {
            eprintln!("writewatch: error: cannot start the VMM thread: {e}");
            std::process::exit(crate::exit_status::VMM_ERROR.into())
        });
    Running { handle, main }
}

struct MainLoop<O> {
    observer: O,
    deadline: Option<Instant>,
    state: Arc<RunState>,
    exits: Arc<ExitCounters>,
    watch: Arc<WriteWatch>,
    devices: Arc<PortDevices>,
    /// What saving a vCPU's state needs: KVM's MSR list, the XSAVE size.
    msr_list: Arc<Vec<u32>>,
    xsave_size: usize,
    handle: VmHandle,
    vcpus: usize,
    mem_bytes: u64,
    /// Records the observer could not take yet, oldest first.
    outbox: VecDeque<Record>,
    subscribers: Vec<(String, Sender<Record>)>,
    ready: Option<Instant>,
    guest_kernel: GuestKernel,
    records: u64,
    bad_records: u64,
}

impl<O: Observer> MainLoop<O> {
    fn run(
        machine: Machine,
        deadline: Option<Instant>,
        control: Receiver<Control>,
        observer: O,
        handle: VmHandle,
        subscribers: Vec<(String, Sender<Record>)>,
    ) -> (RunOutcome, O) {
        let kick = SIGRTMIN() + KICK_SIGNAL_OFFSET;
        // Registering twice (a second VM in one process) is harmless; failing
        // to register would leave kicks with their default action, so stop.
        let handler_ok = register_signal_handler(kick, kick_handler).is_ok();
        let Machine {
            vcpus,
            devices,
            first_output,
            tsc_khz,
            memory,
            watch,
            msr_list,
            xsave_size,
            facts,
        } = machine;
        let state = Arc::new(RunState::new(vcpus.len()));
        let exits = Arc::new(ExitCounters::default());
        let (tx, rx) = bounded(CHANNEL_CAPACITY);
        let mut this = MainLoop {
            observer,
            deadline,
            state: state.clone(),
            exits: exits.clone(),
            watch: watch.clone(),
            devices: devices.clone(),
            msr_list,
            xsave_size,
            handle,
            vcpus: vcpus.len(),
            mem_bytes: watch.ram_bytes(),
            outbox: VecDeque::new(),
            subscribers,
            ready: None,
            guest_kernel: GuestKernel::default(),
            records: facts.records,
            bad_records: 0,
        };
        let mut spawn_error = None;
        let mut threads: Vec<JoinHandle<VcpuReport>> = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let index = vcpu.index;
            let cx = VcpuContext {
                devices: devices.clone(),
                tx: tx.clone(),
                state: state.clone(),
                watch: watch.clone(),
                exits: exits.clone(),
            };
            match thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu_loop(vcpu, &cx))
            {
                Ok(t) => threads.push(t),
                Err(e) => {
                    spawn_error = Some(StopReason::KvmFailure {
                        vcpu: index,
                        detail: format!("cannot start the vCPU thread: {e}"),
                    });
                    break;
                }
            }
        }
        drop(tx);
        let reason = match (spawn_error, handler_ok) {
            (Some(reason), _) => reason,
            (None, false) => StopReason::KvmFailure {
                vcpu: 0,
                detail: "cannot install the vCPU kick signal handler".into(),
            },
            (None, true) => this.serve(&rx, &control, &threads, kick),
        };
        this.handle.ended.store(true, Ordering::SeqCst);

        state.stop();
        while threads.iter().any(|t| !t.is_finished()) {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(kick);
            }
            // Draining frees a vCPU thread blocked on the full channel.
            this.drain(&rx);
            thread::sleep(Duration::from_millis(1));
        }
        this.drain(&rx);
        while let Some(record) = this.outbox.pop_front() {
            // The observer takes it or counts it lost.
            this.observer.record(&record, true);
        }
        let dumps = threads
            .into_iter()
            .filter_map(|t| t.join().ok())
            .map(|r| r.dump)
            .collect();
        let outcome = RunOutcome {
            reason,
            dumps,
            exits: exits.snapshot(),
            first_output: first_output.get().copied(),
            ready: this.ready,
            guest_kernel: this.guest_kernel.clone(),
            records: this.records,
            bad_records: this.bad_records,
            tsc_khz,
            remains: Remains {
                _watch: watch,
                _memory: memory,
            },
        };
        (outcome, this.observer)
    }

    /// The main loop proper, until something ends the run.
    fn serve(
        &mut self,
        vcpu_rx: &Receiver<VcpuMessage>,
        control: &Receiver<Control>,
        threads: &[JoinHandle<VcpuReport>],
        kick: i32,
    ) -> StopReason {
        let quiet = never();
        let mut last_kick = Instant::now();
        loop {
            // Checked on every turn: a queue that never empties must not
            // outlast the deadline.
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return StopReason::Timeout;
            }
            let throttled = self.state.throttle() > 0;
            if throttled && last_kick.elapsed() >= THROTTLE_SLICE {
                // A vCPU that does not exit never reaches its throttle point.
                self.kick_running(threads, kick);
                last_kick = Instant::now();
            }
            while let Some(record) = self.outbox.front() {
                if !self.observer.record(record, false) {
                    break;
                }
                self.outbox.pop_front();
            }
            // While a record waits, the vCPUs wait too.
            let from_vcpus = if self.outbox.is_empty() {
                vcpu_rx
            } else {
                &quiet
            };
            let mut wait = self.deadline.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            if !self.outbox.is_empty() {
                wait = wait.min(RETRY);
            }
            if throttled {
                wait = wait.min(THROTTLE_SLICE);
            }
            select! {
                recv(from_vcpus) -> message => match message {
                    Ok(message) => {
                        if let Some(reason) = self.on_vcpu(message) {
                            return reason;
                        }
                    }
                    Err(_) => {
                        return StopReason::KvmFailure {
                            vcpu: 0,
                            detail: "every vCPU thread ended without a reason".into(),
                        };
                    }
                },
                recv(control) -> request => {
                    if let Ok(request) = request {
                        if let Some(reason) = self.on_control(request, vcpu_rx, threads, kick) {
                            return reason;
                        }
                    }
                },
                default(wait) => {}
            }
        }
    }

    fn on_vcpu(&mut self, message: VcpuMessage) -> Option<StopReason> {
        match message {
            VcpuMessage::Guest(GuestEvent::Exit(code)) => Some(StopReason::GuestExit(code)),
            VcpuMessage::Guest(GuestEvent::Record(record)) => {
                self.on_record(record);
                None
            }
            VcpuMessage::Guest(GuestEvent::BadRecord(err)) => {
                self.bad_records += 1;
                self.observer.bad_record(&err);
                None
            }
            VcpuMessage::Stopped(reason) => Some(reason),
        }
    }

    fn on_record(&mut self, record: Record) {
        self.records += 1;
        match record.kind.as_str() {
            "ready" if self.ready.is_none() => {
                self.ready = Some(Instant::now());
                self.guest_kernel = GuestKernel::from_ready(&record.line);
            }
            "process" | "process_exit" => self.note_process(&record),
            "workload" => {
                if let Ok(announced) = Announced::from_record(&record) {
                    *self
                        .handle
                        .workload
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(announced);
                }
            }
            _ => {}
        }
        self.subscribers.retain(|(kind, tx)| {
            *kind != record.kind
                || !matches!(
                    tx.try_send(record.clone()),
                    Err(crossbeam_channel::TrySendError::Disconnected(_))
                )
        });
        if !self.outbox.is_empty() || !self.observer.record(&record, false) {
            self.outbox.push_back(record);
        }
    }

    /// The guest's process table, which VA watches check page tables against.
    fn note_process(&self, record: &Record) {
        #[derive(serde::Deserialize)]
        struct Fields {
            pid: u64,
            cr3: Option<u64>,
            program: Option<String>,
        }
        let Some(f) = record.fields::<Fields>() else {
            return;
        };
        if record.kind == "process" {
            if let Some(cr3) = f.cr3 {
                let program = f.program.unwrap_or_default().chars().take(64).collect();
                self.watch.note_process(
                    Some(ProcessInfo {
                        pid: f.pid,
                        cr3,
                        program,
                    }),
                    None,
                );
            }
        } else {
            self.watch.note_process(None, Some(f.pid));
        }
    }

    fn on_control(
        &mut self,
        request: Control,
        vcpu_rx: &Receiver<VcpuMessage>,
        threads: &[JoinHandle<VcpuReport>],
        kick: i32,
    ) -> Option<StopReason> {
        match request {
            Control::Pause(reply) => {
                let result = if self.state.is_paused() {
                    Err(ControlError::AlreadyPaused)
                } else {
                    self.pause(threads, kick)
                };
                let _ = reply.send(result);
            }
            Control::Resume(reply) => {
                let result = if self.state.is_paused() {
                    self.state.resume();
                    Ok(())
                } else {
                    Err(ControlError::NotPaused)
                };
                let _ = reply.send(result);
            }
            Control::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Control::Subscribe(kind, tx) => self.subscribers.push((kind, tx)),
            Control::Stop(reason) => return Some(reason),
            Control::SaveState(reply) => {
                let (result, ended) = self.save_state(vcpu_rx, threads);
                let _ = reply.send(result);
                return ended;
            }
            Control::Throttle(percent) => self.state.set_throttle(percent),
        }
        None
    }

    /// Kicks every vCPU that is in the guest out of it once.
    fn kick_running(&self, threads: &[JoinHandle<VcpuReport>], kick: i32) {
        for (i, t) in threads.iter().enumerate() {
            if self.state.in_guest(i) && !t.is_finished() {
                let _ = t.kill(kick);
            }
        }
    }

    /// Saves the paused machine: each parked vCPU thread saves its own
    /// vCPU (KVM wants vCPU ioctls from the thread that runs it), meanwhile
    /// this loop keeps taking what vCPU threads send (one may be finishing
    /// a record before it parks). Also returns why the run must end, if a
    /// vCPU ended meanwhile.
    fn save_state(
        &mut self,
        vcpu_rx: &Receiver<VcpuMessage>,
        threads: &[JoinHandle<VcpuReport>],
    ) -> (Result<MachineState, ControlError>, Option<StopReason>) {
        if !self.state.is_paused() {
            return (Err(ControlError::NotPaused), None);
        }
        let (tx, rx) = bounded(self.vcpus);
        for (i, thread) in threads.iter().enumerate() {
            let task = ParkedTask::SaveState {
                msr_list: self.msr_list.clone(),
                xsave_size: self.xsave_size,
                reply: tx.clone(),
            };
            if thread.is_finished() || !self.state.post(i, task) {
                return (
                    Err(ControlError::Save(format!("vCPU {i} has stopped"))),
                    None,
                );
            }
        }
        drop(tx);
        let mut saved: Vec<Option<_>> = (0..self.vcpus).map(|_| None).collect();
        let mut ended = None;
        let give_up = Instant::now() + SAVE_WAIT;
        let mut failure = None;
        while saved.iter().any(Option::is_none) && failure.is_none() {
            let left = give_up.saturating_duration_since(Instant::now());
            select! {
                recv(rx) -> reply => match reply {
                    Ok((index, Ok(state))) => saved[index as usize] = Some(state),
                    Ok((_, Err(why))) => failure = Some(why),
                    Err(_) => failure = Some("a vCPU thread ended while saving".into()),
                },
                recv(vcpu_rx) -> message => {
                    if let Ok(message) = message {
                        if let Some(reason) = self.on_vcpu(message) {
                            ended = Some(reason);
                        }
                    }
                },
                default(left) => failure = Some(format!("a vCPU thread did not save its state within {SAVE_WAIT:?}")),
            }
        }
        for i in 0..self.vcpus {
            // A thread that ended never takes its task.
            let _ = self.state.unclaimed(i);
        }
        if let Some(why) = failure {
            return (Err(ControlError::Save(why)), ended);
        }
        let vm = match vm_state::VmState::save(&self.watch.vm().fd) {
            Ok(vm) => vm,
            Err(e) => return (Err(ControlError::Save(e.to_string())), ended),
        };
        let state = MachineState {
            vcpus: saved.into_iter().flatten().collect(),
            vm,
            console: self.devices.save(),
            workload: self.handle.workload(),
            processes: self.watch.processes(),
            records: self.records,
        };
        (Ok(state), ended)
    }

    /// Parks every vCPU and waits until none is in the guest.
    fn pause(
        &mut self,
        threads: &[JoinHandle<VcpuReport>],
        kick: i32,
    ) -> Result<PauseInfo, ControlError> {
        let began = Instant::now();
        self.state.request_pause();
        loop {
            let inside: Vec<usize> = (0..self.vcpus)
                .filter(|&i| self.state.in_guest(i))
                .collect();
            if inside.is_empty() {
                break;
            }
            for i in inside {
                if let Some(t) = threads.get(i).filter(|t| !t.is_finished()) {
                    let _ = t.kill(kick);
                }
            }
            thread::sleep(Duration::from_micros(200));
        }
        Ok(PauseInfo {
            micros: began.elapsed().as_secs_f64() * 1e6,
        })
    }

    fn status(&self) -> VmStatus {
        VmStatus {
            state: if self.state.is_paused() {
                VmState::Paused
            } else {
                VmState::Running
            },
            uptime_ms: self.handle.uptime().as_secs_f64() * 1e3,
            vcpus: self.vcpus,
            mem_bytes: self.mem_bytes,
            ram: self.watch.ram_ranges(),
            vm_exits: self.exits.snapshot(),
            records: self.records,
            bad_records: self.bad_records,
        }
    }

    /// Takes what the vCPUs queued after the VM stopped: records still
    /// count (queued behind any the observer has not taken yet), an exit or
    /// a crash no longer changes the outcome.
    fn drain(&mut self, rx: &Receiver<VcpuMessage>) {
        while let Ok(message) = rx.try_recv() {
            match message {
                VcpuMessage::Guest(GuestEvent::Record(record)) => {
                    self.records += 1;
                    self.outbox.push_back(record);
                }
                VcpuMessage::Guest(GuestEvent::BadRecord(err)) => {
                    self.bad_records += 1;
                    self.observer.bad_record(&err);
                }
                _ => {}
            }
        }
    }
}
