//! Measures off the event loop. The part of an answer that grows with the
//! worker's size (`/proc` reads, `mincore`, pagemap, smaps) runs on a thread of
//! the module's own while the worker goes on serving; the request waits, and
//! is answered on the loop when the thread is done.
//!
//! The thread touches no nginx structure: it gets a `collect::Job` (addresses
//! and lengths) and returns `collect::Measured`. It tells the loop through an
//! eventfd that nginx watches like any connection (one connection slot per
//! worker, marked as a channel so a graceful exit does not wait for it or
//! complain about it). The only lock is the module's own queue mutex, held for
//! a push or a pop, never while measuring.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_cycle, ngx_del_timer, ngx_event_t, ngx_free_connection,
    ngx_get_connection, ngx_handle_read_event, ngx_http_finalize_request, ngx_http_request_t,
    ngx_http_run_posted_requests, ngx_int_t, ngx_log_t, ngx_msec_t, ngx_pool_cleanup_add,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ALERT, NGX_OK,
};
use ngx::ngx_log_error;

use super::collect::{Job, LoopPart, Measured};
use super::request_bits;
use crate::panic_guard::run_guarded;
use crate::source_error::SourceError;

/// What the loop does with a measured answer: sends it, returns the status for
/// `ngx_http_finalize_request`.
pub type Complete = Box<dyn FnOnce(&mut ngx_http_request_t, LoopPart, Measured) -> ngx_int_t>;

/// The waiting request; null once nginx freed it.
type RequestCell = Cell<*mut ngx_http_request_t>;

struct Waiting {
    id: u64,
    request: Rc<RequestCell>,
    part: LoopPart,
    complete: Complete,
    since: std::time::Instant,
}

/// How long a request waits for its measuring at most: past it, it is answered
/// 503 and the measuring's result, if it ever comes, is dropped. Measuring takes
/// milliseconds; this bounds the wait should the thread ever stall.
#[cfg(not(feature = "test-panic"))]
const MEASURING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The test-only build waits 2 s, so t/10 can prove the bound quickly.
#[cfg(feature = "test-panic")]
const MEASURING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Between the loop and the thread.
struct Queue {
    jobs: VecDeque<(u64, Job)>,
    /// `None`: the measuring panicked (the thread goes on).
    done: Vec<(u64, Option<Measured>)>,
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
/// The wake-up channel's read event (loop thread only). While requests wait it
/// also carries a timer: nginx's graceful exit waits for timers, so a worker
/// that is shutting down answers its waiting requests before it exits.
static WAKE_EVENT: AtomicPtr<ngx_event_t> = AtomicPtr::new(ptr::null_mut());
const WAITING_TIMER_MS: ngx_msec_t = 1000;

/// What the loop does with a measuring done for no request (a worker's own
/// summary, published on a timer).
pub type Background = Box<dyn FnOnce(LoopPart, Measured)>;

struct BackgroundJob {
    id: u64,
    part: LoopPart,
    done: Background,
    since: std::time::Instant,
}

thread_local! {
    /// Requests waiting, on the loop's thread only.
    static WAITING: RefCell<(u64, Vec<Waiting>)> = const { RefCell::new((0, Vec::new())) };
    /// Measurings for no request, on the loop's thread only.
    static BACKGROUND: RefCell<Vec<BackgroundJob>> = const { RefCell::new(Vec::new()) };
}

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An answer to be measured: the loop's part, the thread's job, and what the
/// loop does with the result.
pub struct Answer {
    pub part: LoopPart,
    pub job: Job,
    pub complete: Complete,
}

impl Answer {
    /// Measures and answers here, on the loop.
    pub fn now(self, r: &mut ngx_http_request_t) -> ngx_int_t {
        (self.complete)(r, self.part, self.job.measure())
    }
}

/// Hands the answer's job to the thread; its `complete` runs on the loop with
/// the result. The request is kept alive until then (`count` raised; the
/// caller returns `NGX_DONE`). `Err` gives the answer back when the thread
/// cannot be had: the caller then answers `now`.
pub fn submit(r: &mut ngx_http_request_t, answer: Answer) -> Result<(), Box<Answer>> {
    let Answer {
        part,
        job,
        complete,
    } = answer;
    if let Err(failed) = ensure_started() {
        let message = format!("measuring on the event loop: {}", failed.reason);
        if failed.log {
            log_alert(r, &format!("memory_status: {message}"));
        }
        let mut part = part;
        part.add_error(SourceError::new("measuring", message));
        return Err(Box::new(Answer {
            part,
            job,
            complete,
        }));
    }
    let id = WAITING.with(|w| {
        let mut w = w.borrow_mut();
        w.0 += 1;
        w.0
    });
    // Whoever frees the request (a terminated subrequest's parent, the
    // shutdown timer, a client gone) destroys its pool (a subrequest's is its
    // main request's): the cleanup clears the shared cell, so the measuring's
    // result finds the request gone and is dropped.
    let request = Rc::new(Cell::new(r as *mut ngx_http_request_t));
    // SAFETY: a live request's pool; a cleanup without data of its own.
    let cleanup = unsafe { ngx_pool_cleanup_add(r.pool, 0) };
    if cleanup.is_null() {
        return Err(Box::new(Answer {
            part,
            job,
            complete,
        }));
    }
    // SAFETY: the cleanup nginx just made; it runs once, when the pool is
    // destroyed, and takes back the reference given to it here.
    unsafe {
        (*cleanup).data = Rc::into_raw(Rc::clone(&request)).cast_mut().cast();
        (*cleanup).handler = Some(forget_request);
    }
    WAITING.with(|w| {
        w.borrow_mut().1.push(Waiting {
            id,
            request,
            part,
            complete,
            since: std::time::Instant::now(),
        })
    });
    queue().jobs.push_back((id, job));
    WORK.notify_one();
    keep_worker_while_waiting();
    // SAFETY: `r` is a live request; the C side raises its main request's count.
    unsafe { request_bits::ngx_memory_status_main_count_inc(r) };
    Ok(())
}

/// The request pool's cleanup: the request is being freed while its answer
/// may still wait. Its cell is cleared; the measuring, when done, finds
/// nothing to answer.
extern "C" fn forget_request(data: *mut c_void) {
    // SAFETY: `submit` gave this cleanup one reference to the cell.
    let request = unsafe { Rc::from_raw(data.cast_const().cast::<RequestCell>()) };
    request.set(ptr::null_mut());
    drop(request);
    // A worker shutting down need not wait for an answer nobody will get.
    keep_worker_while_waiting();
}

/// Hands a measuring for no request to the thread; `done` runs on the loop
/// with the result. It keeps no worker alive: a worker that exits first drops
/// it. `Err` gives it back when the thread cannot be had.
pub fn submit_background(
    part: LoopPart,
    job: Job,
    done: Background,
) -> Result<(), Box<(LoopPart, Job, Background)>> {
    if ensure_started().is_err() {
        return Err(Box::new((part, job, done)));
    }
    let id = WAITING.with(|w| {
        let mut w = w.borrow_mut();
        w.0 += 1;
        w.0
    });
    BACKGROUND.with(|b| {
        b.borrow_mut().push(BackgroundJob {
            id,
            part,
            done,
            since: std::time::Instant::now(),
        })
    });
    queue().jobs.push_back((id, job));
    WORK.notify_one();
    Ok(())
}

/// Runs a finished background job's `done`, if it is one of them.
fn finish_background(id: u64, measured: &mut Option<Measured>) -> bool {
    let job = BACKGROUND.with(|b| {
        let mut b = b.borrow_mut();
        let at = b.iter().position(|x| x.id == id)?;
        Some(b.swap_remove(at))
    });
    let Some(job) = job else {
        return false;
    };
    let failed = match measured.take() {
        Some(measured) => {
            let BackgroundJob { part, done, .. } = job;
            run_guarded(|| done(part, measured)).err()
        }
        None => Some("while measuring".to_string()),
    };
    if let Some(message) = failed {
        // SAFETY: the cycle's log lives as long as the cycle.
        let log = unsafe { (*ngx_cycle).log };
        ngx_log_error!(NGX_LOG_ALERT, log, "memory_status: panic: {message}");
    }
    true
}

thread_local! {
    /// Loop thread only: when an out-of-memory alert was last logged.
    static OUT_OF_MEMORY_ALERTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// An [alert] for a measuring given up for memory, at most once a minute: a
/// server short of memory must not fill its disk with our complaints too.
pub fn log_out_of_memory(log: *mut ngx_log_t, what: &str) {
    let now = Instant::now();
    let last = OUT_OF_MEMORY_ALERTED.with(Cell::get);
    if last.is_some_and(|at| now.duration_since(at) < ALERT_EVERY) {
        return;
    }
    OUT_OF_MEMORY_ALERTED.with(|c| c.set(Some(now)));
    ngx_log_error!(
        NGX_LOG_ALERT,
        log,
        "memory_status: out of memory while measuring, {what} (said at most once a minute)"
    );
}

fn log_alert(r: &ngx_http_request_t, message: &str) {
    // SAFETY: a request always has a connection with a log.
    let log = unsafe { (*r.connection).log };
    ngx_log_error!(NGX_LOG_ALERT, log, "{message}");
}

/// Why the thread or its channel cannot be had now, and whether to log it.
struct StartFailed {
    reason: String,
    log: bool,
}

/// After a failed start: the next try, the wait after it (1 s, doubling up to
/// a minute), and the last alert (one a minute at most, and one again after
/// a success in between).
struct Retry {
    next_at: Instant,
    wait: Duration,
    reason: String,
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
fn ensure_started() -> Result<(), StartFailed> {
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
fn start() -> Result<(), String> {
    let pid = std::process::id();
    if THREAD_IN.load(Ordering::Relaxed) != pid {
        spawn_thread()?;
        THREAD_IN.store(pid, Ordering::Relaxed);
    }
    open_channel()?;
    STARTED_IN.store(pid, Ordering::Relaxed);
    Ok(())
}

fn spawn_thread() -> Result<(), String> {
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
            .spawn(measure_forever);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        spawned.map(drop).map_err(|e| format!("thread: {e}"))
    }
}

fn open_channel() -> Result<(), String> {
    // SAFETY: plain system calls; the connection is nginx's, set up as nginx's
    // own notification channel is, and given back if it cannot be watched.
    unsafe {
        // A cycle reloaded in single-process mode has no connections of its
        // own: asking nginx for one would log an [alert] at every try.
        if (*ngx_cycle).free_connections.is_null() {
            return Err("no free connection for the wake-up channel".into());
        }
        let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        if fd == -1 {
            return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
        }
        let c: *mut ngx_connection_t = ngx_get_connection(fd, (*ngx_cycle).log);
        if c.is_null() {
            libc::close(fd);
            return Err("no free connection for the wake-up channel".into());
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
            return Err("cannot watch the wake-up channel".into());
        }
        WAKE_FD.store(fd, Ordering::Relaxed);
        WAKE_EVENT.store(rev, Ordering::Relaxed);
    }
    Ok(())
}

fn measure_forever() {
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
        let measured =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.measure())).ok();
        queue().done.push((id, measured));
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
}

/// A timer on the wake-up event while any request waits, none otherwise.
/// Requests nginx freed meanwhile are forgotten first: they keep no worker.
fn keep_worker_while_waiting() {
    let waiting = WAITING.with(|w| match w.try_borrow_mut() {
        Ok(mut w) => {
            w.1.retain(|x| !x.request.get().is_null());
            !w.1.is_empty()
        }
        // Not reached (no borrow is held across a call into nginx); keeping
        // the timer is the safe side.
        Err(_) => true,
    });
    let ev = WAKE_EVENT.load(Ordering::Relaxed);
    if ev.is_null() {
        return;
    }
    // SAFETY: the event of the wake-up connection, on the loop's thread.
    unsafe {
        let timer_set = (*ev).timer_set() != 0;
        if waiting && !timer_set {
            ngx_add_timer(ev, WAITING_TIMER_MS);
        } else if !waiting && timer_set {
            ngx_del_timer(ev);
        }
    }
}

/// On the loop: answers every request whose measuring is done (woken by the
/// thread, or by the waiting timer).
extern "C" fn on_wake(ev: *mut ngx_event_t) {
    // SAFETY: nginx calls the handler with the event set up in ensure_started.
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
    let done = std::mem::take(&mut queue().done);
    for (id, mut measured) in done {
        if finish_background(id, &mut measured) {
            continue;
        }
        let waiting = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            let at = w.1.iter().position(|x| x.id == id)?;
            Some(w.1.swap_remove(at))
        });
        let Some(waiting) = waiting else {
            continue;
        };
        // SAFETY: not freed (its pool's cleanup would have cleared the cell),
        // and kept from finishing by the raised count.
        let Some(r) = (unsafe { waiting.request.get().as_mut() }) else {
            continue;
        };
        let rc = match measured {
            Some(measured) => {
                let complete = waiting.complete;
                let part = waiting.part;
                let request: *mut ngx_http_request_t = r;
                // SAFETY: the same live request, used by one closure at a time.
                match run_guarded(|| complete(unsafe { &mut *request }, part, measured)) {
                    Ok(rc) => rc,
                    Err(message) => {
                        log_alert(r, &format!("memory_status: panic: {message}"));
                        NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
                    }
                }
            }
            None => {
                log_alert(r, "memory_status: panic while measuring");
                NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
            }
        };
        // SAFETY: ends what the handler left open with NGX_DONE (count raised),
        // then runs what that posted (a parent waiting on this subrequest), as
        // nginx's own event handlers do after a request's work.
        unsafe {
            let c = r.connection;
            ngx_http_finalize_request(r, rc);
            ngx_http_run_posted_requests(c);
        }
    }
    answer_overdue();
    keep_worker_while_waiting();
}

/// Answers 503 to every request that waited longer than `MEASURING_TIMEOUT`,
/// and forgets background jobs as late.
fn answer_overdue() {
    BACKGROUND.with(|b| {
        b.borrow_mut()
            .retain(|x| x.since.elapsed() < MEASURING_TIMEOUT)
    });
    let overdue: Vec<Waiting> = WAITING.with(|w| {
        let mut w = w.borrow_mut();
        let (late, waiting) = std::mem::take(&mut w.1)
            .into_iter()
            .partition(|x: &Waiting| x.since.elapsed() >= MEASURING_TIMEOUT);
        w.1 = waiting;
        late
    });
    for waiting in overdue {
        // SAFETY: as in on_wake.
        let Some(r) = (unsafe { waiting.request.get().as_mut() }) else {
            continue;
        };
        log_alert(
            r,
            &format!(
                "memory_status: measuring took over {} s, answered 503",
                MEASURING_TIMEOUT.as_secs()
            ),
        );
        // SAFETY: as in on_wake.
        unsafe {
            let c = r.connection;
            ngx_http_finalize_request(r, NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
            ngx_http_run_posted_requests(c);
        }
    }
}
