//! The module's own thread and the loop's wake-up channel, over any job: the
//! loop pushes boxed jobs, the thread runs them one at a time (a panic is
//! caught there and reported as no output) and wakes the loop through an
//! eventfd that nginx watches like any connection (one connection slot per
//! worker, marked as a channel so a graceful exit does not wait for it or
//! complain about it). The only lock is the queue's mutex, held for a push
//! or a pop, never while a job runs. What a job is for, and what is done
//! with its output, is `offloop`'s.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_current_msec, ngx_cycle, ngx_del_timer, ngx_event_t,
    ngx_free_connection, ngx_get_connection, ngx_handle_read_event, ngx_int_t, ngx_msec_t, NGX_OK,
};

/// A job's result, typed by whoever pushed the job.
pub type Output = Box<dyn Any + Send>;
/// What the thread runs.
pub type Job = Box<dyn FnOnce() -> Output + Send>;

/// Between the loop and the thread.
struct Queue {
    jobs: VecDeque<(u64, Job)>,
    /// `None`: the job panicked (the thread goes on).
    done: Vec<(u64, Option<Output>)>,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    jobs: VecDeque::new(),
    done: Vec::new(),
});
static WORK: Condvar = Condvar::new();
/// The eventfd the thread writes when it is done with a job.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The process whose thread and wake-up channel these are (0: none yet).
static STARTED_IN: AtomicU32 = AtomicU32::new(0);
/// The process whose measuring thread runs (it may run before the channel is).
static THREAD_IN: AtomicU32 = AtomicU32::new(0);
/// The wake-up channel's read event (loop thread only). It also carries the
/// timer of `set_timer`.
static WAKE_EVENT: AtomicPtr<ngx_event_t> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    /// Loop thread only: what runs when the loop is woken.
    static ON_DONE: Cell<Option<fn()>> = const { Cell::new(None) };
}

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands job `id` to the thread.
pub fn push(id: u64, job: Job) {
    queue().jobs.push_back((id, job));
    WORK.notify_one();
}

/// The jobs done since the last call, each with its output (`None`: it
/// panicked).
pub fn take_done() -> Vec<(u64, Option<Output>)> {
    std::mem::take(&mut queue().done)
}

/// Says job `id` is done without output, and wakes the loop for it.
pub fn fail(id: u64) {
    queue().done.push((id, None));
    wake();
}

/// Why the thread or its channel cannot be had now, and whether to log it.
pub struct StartFailed {
    pub reason: StartError,
    pub log: bool,
}

/// Why the thread or its wake-up channel could not be started.
#[derive(Debug, Clone)]
pub enum StartError {
    /// The system refused a thread; its words.
    Thread(String),
    /// `eventfd` failed; the system's words.
    Eventfd(String),
    /// nginx has no free connection to watch the channel with.
    NoFreeConnection,
    /// nginx's event module would not watch the channel.
    CannotWatch,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Thread(os) => write!(f, "thread: {os}"),
            StartError::Eventfd(os) => write!(f, "eventfd: {os}"),
            StartError::NoFreeConnection => {
                f.write_str("no free connection for the wake-up channel")
            }
            StartError::CannotWatch => f.write_str("cannot watch the wake-up channel"),
        }
    }
}

/// After a failed start: the next try, the wait after it (1 s, doubling up to
/// a minute), and the last alert (one a minute at most, and one again after
/// a success in between).
struct Retry {
    next_at: Instant,
    wait: Duration,
    reason: StartError,
    alerted_at: Instant,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
const ALERT_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Loop thread only: set while the thread or channel cannot be started.
    static RETRY: RefCell<Option<Retry>> = const { RefCell::new(None) };
}

/// The thread and its channel, started once per process, tried again with a
/// backoff after a failure; each failure is logged at most once a minute.
/// `on_done` runs on the loop whenever jobs are done (or the waiting timer
/// fires): it takes them with `take_done`.
///
/// # Safety
/// On nginx's event-loop thread: the channel takes a connection of the
/// running cycle and watches it with the loop's event module.
pub unsafe fn ensure_started(on_done: fn()) -> Result<(), StartFailed> {
    ON_DONE.with(|f| f.set(Some(on_done)));
    if STARTED_IN.load(Ordering::Relaxed) == std::process::id() {
        return Ok(());
    }
    let now = Instant::now();
    let waiting = RETRY.with(|r| {
        r.borrow()
            .as_ref()
            .filter(|r| now < r.next_at)
            .map(|r| r.reason.clone())
    });
    if let Some(reason) = waiting {
        return Err(StartFailed { reason, log: false });
    }
    let Err(reason) = start() else {
        RETRY.with(|r| *r.borrow_mut() = None);
        return Ok(());
    };
    RETRY.with(|r| {
        let mut r = r.borrow_mut();
        let (wait, log) = match r.as_ref() {
            None => (RETRY_FIRST, true),
            Some(last) => (
                (last.wait * 2).min(RETRY_MAX),
                now.duration_since(last.alerted_at) >= ALERT_EVERY,
            ),
        };
        let alerted_at = match (log, r.as_ref()) {
            (false, Some(last)) => last.alerted_at,
            _ => now,
        };
        *r = Some(Retry {
            next_at: now + wait,
            wait,
            reason: reason.clone(),
            alerted_at,
        });
        Err(StartFailed { reason, log })
    })
}

/// Starts the thread, then the wake-up channel. A step that fails leaves
/// nothing behind (no descriptor, no connection slot), so a worker short of
/// threads or connections is not made shorter by retrying.
fn start() -> Result<(), StartError> {
    let pid = std::process::id();
    if THREAD_IN.load(Ordering::Relaxed) != pid {
        spawn_thread()?;
        THREAD_IN.store(pid, Ordering::Relaxed);
    }
    open_channel()?;
    STARTED_IN.store(pid, Ordering::Relaxed);
    Ok(())
}

fn spawn_thread() -> Result<(), StartError> {
    // SAFETY: signal masks of this thread only, restored right after.
    unsafe {
        // The thread takes no signal: nginx's signals must reach the loop.
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let spawned = std::thread::Builder::new()
            .name("memory_status".into())
            .stack_size(256 << 10)
            .spawn(run_forever);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        spawned
            .map(drop)
            .map_err(|e| StartError::Thread(e.to_string()))
    }
}

fn open_channel() -> Result<(), StartError> {
    // SAFETY: plain system calls; the connection is nginx's, set up as nginx's
    // own notification channel is, and given back if it cannot be watched.
    unsafe {
        // A cycle reloaded in single-process mode has no connections of its
        // own: asking nginx for one would log an [alert] at every try.
        if (*ngx_cycle).free_connections.is_null() {
            return Err(StartError::NoFreeConnection);
        }
        let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        if fd == -1 {
            let os = std::io::Error::last_os_error().to_string();
            return Err(StartError::Eventfd(os));
        }
        let c: *mut ngx_connection_t = ngx_get_connection(fd, (*ngx_cycle).log);
        if c.is_null() {
            libc::close(fd);
            return Err(StartError::NoFreeConnection);
        }
        let rev: *mut ngx_event_t = (*c).read;
        (*rev).handler = Some(on_wake);
        (*rev).log = (*c).log;
        // A channel: a graceful exit neither waits for it nor reports it open.
        (*rev).set_channel(1);
        (*(*c).write).set_channel(1);
        if ngx_handle_read_event(rev, 0) != NGX_OK as ngx_int_t {
            ngx_free_connection(c);
            libc::close(fd);
            return Err(StartError::CannotWatch);
        }
        WAKE_FD.store(fd, Ordering::Relaxed);
        WAKE_EVENT.store(rev, Ordering::Relaxed);
    }
    Ok(())
}

fn run_forever() {
    loop {
        let (id, job) = {
            let mut q = queue();
            loop {
                if let Some(next) = q.jobs.pop_front() {
                    break next;
                }
                q = WORK
                    .wait(q)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).ok();
        queue().done.push((id, output));
        wake();
    }
}

/// Wakes the loop: its `on_wake` runs at its next turn.
pub fn wake() {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes to the eventfd; a full counter (EAGAIN) still
    // leaves the loop woken.
    unsafe {
        libc::write(
            WAKE_FD.load(Ordering::Relaxed),
            (&one as *const u64).cast::<c_void>(),
            8,
        );
    }
}

/// The wake-up event's timer: `Some(ms)` to be woken within `ms` even if no
/// job is done, `None` for no timer. nginx's graceful exit waits for timers,
/// so a worker shutting down is kept while the timer is set.
///
/// # Safety
/// On nginx's event-loop thread: nginx's timer tree is the loop's.
pub unsafe fn set_timer(delay_ms: Option<ngx_msec_t>) {
    let ev = WAKE_EVENT.load(Ordering::Relaxed);
    if ev.is_null() {
        return;
    }
    // SAFETY: the event of the wake-up connection, on the loop's thread.
    unsafe {
        match delay_ms {
            Some(ms) => {
                // nginx keeps a timer it is asked to move by less than 300 ms
                // (NGX_TIMER_LAZY_DELAY): one that must fire sooner is
                // deleted first, so no deadline is missed by that much.
                let key = ngx_current_msec.wrapping_add(ms);
                if (*ev).timer_set() != 0 && ((*ev).timer.key.wrapping_sub(key) as i64) > 0 {
                    ngx_del_timer(ev);
                }
                ngx_add_timer(ev, ms);
            }
            None if (*ev).timer_set() != 0 => ngx_del_timer(ev),
            None => {}
        }
    }
}

/// On the loop, woken by the thread or the timer: drains the channel, then
/// runs `on_done`.
extern "C" fn on_wake(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls the handler with the event set up in open_channel.
    unsafe {
        (*ev).set_timedout(0);
        let mut counter: u64 = 0;
        while libc::read(
            WAKE_FD.load(Ordering::Relaxed),
            (&mut counter as *mut u64).cast::<c_void>(),
            8,
        ) == 8
        {}
        (*ev).set_ready(0);
    }
    if let Some(on_done) = ON_DONE.with(Cell::get) {
        on_done();
    }
}
