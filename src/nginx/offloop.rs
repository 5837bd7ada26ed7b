//! Measures off the event loop. What grows with the worker's size (`/proc`
//! reads, `mincore`, pagemap, smaps), the assembly of the report and its
//! rendering into bytes run on a thread of the module's own while the worker
//! goes on serving; the loop copies nginx's structures before, and publishes
//! and sends after.
//!
//! Requests share measurings: while one runs, the requests that arrive wait
//! for the next, which begins (on the loop, after all of them arrived) when
//! the running one ends, and serves all those asking the same measuring,
//! rendered once per distinct rendering. A flood costs one measuring at a
//! time per worker.
//!
//! The thread touches no nginx structure: it gets plain data and returns
//! `collect::Finished`. It tells the loop through an eventfd that nginx
//! watches like any connection (one connection slot per worker, marked as a
//! channel so a graceful exit does not wait for it or complain about it). The
//! only lock is the module's own queue mutex, held for a push or a pop, never
//! while measuring.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_current_msec, ngx_cycle, ngx_del_timer, ngx_event_t,
    ngx_free_connection, ngx_get_connection, ngx_handle_read_event, ngx_http_finalize_request,
    ngx_http_request_t, ngx_http_run_posted_requests, ngx_int_t, ngx_msec_t, ngx_pool_cleanup_add,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_OK, NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ALERT,
    NGX_OK,
};
use ngx::ngx_log_error;

use super::collect::{self, Finished, Measuring};
use super::{registry, request_bits, respond};
use crate::alloc_guard;
use crate::format::Rendering;
use crate::model::source_error::SourceError;
use crate::panic_guard::run_guarded;

/// What a request asks for: the measuring it needs and its rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub measuring: Measuring,
    pub rendering: Rendering,
}

/// What the thread runs: a measuring's whole work.
pub type Work = Box<dyn FnOnce() -> Finished + Send>;

/// What the loop does with a measuring done for no request (a worker's own
/// summary, published on a timer).
pub type Background = Box<dyn FnOnce(Finished)>;

/// The waiting request; null once nginx freed it.
type RequestCell = Cell<*mut ngx_http_request_t>;

struct Waiting {
    request: Rc<RequestCell>,
    ask: Ask,
    since: Instant,
}

/// A measuring running for requests: each request with the index of its
/// rendering among `renderings`.
struct Running {
    id: u64,
    renderings: Vec<Rendering>,
    requests: Vec<(Waiting, usize)>,
    /// `alloc_guard::failures()` as it began.
    mark: u64,
}

struct BackgroundJob {
    id: u64,
    done: Background,
    since: Instant,
}

/// Loop thread only.
#[derive(Default)]
struct Answers {
    last_id: u64,
    running: Option<Running>,
    /// Requests that arrived while a measuring ran.
    pending: Vec<Waiting>,
    background: Vec<BackgroundJob>,
}

/// How long a request waits for its measuring at most: past it, it is answered
/// 503 and the measuring's result, if it ever comes, is dropped. Measuring takes
/// milliseconds; this bounds the wait should the thread ever stall.
#[cfg(not(feature = "test-panic"))]
const MEASURING_TIMEOUT: Duration = Duration::from_secs(10);
/// The test-only build waits 2 s, so t/10 can prove the bound quickly.
#[cfg(feature = "test-panic")]
const MEASURING_TIMEOUT: Duration = Duration::from_secs(2);

/// Between the loop and the thread.
struct Queue {
    jobs: VecDeque<(u64, Work)>,
    /// `None`: the measuring panicked (the thread goes on).
    done: Vec<(u64, Option<Finished>)>,
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

thread_local! {
    static ANSWERS: RefCell<Answers> = RefCell::new(Answers::default());
}

fn queue() -> MutexGuard<'static, Queue> {
    QUEUE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn next_id() -> u64 {
    ANSWERS.with(|a| {
        let mut a = a.borrow_mut();
        a.last_id += 1;
        a.last_id
    })
}

fn push_work(id: u64, work: Work) {
    queue().jobs.push_back((id, work));
    WORK.notify_one();
}

/// Without the thread: measured, assembled and rendered here, on the loop,
/// with `error` (why not off it) in the answer's `errors`.
pub fn answer_now(r: &mut ngx_http_request_t, ask: Ask, error: Option<SourceError>) -> ngx_int_t {
    let mark = alloc_guard::failures();
    let (mut part, job) = collect::begin(ask.measuring);
    if let Some(error) = error {
        part.add_error(error);
    }
    let finished = collect::answer_work(part, job, &[ask.rendering]);
    publish(&finished, mark);
    respond_with(r, &finished, 0, ask.rendering, mark)
}

/// The request waits for a measuring on the thread (its own, or the next one
/// when one runs); it is answered on the loop when that is done. It is kept
/// alive until then (`count` raised; the caller returns `NGX_DONE`). `Err`
/// when the thread cannot be had: the caller then answers `answer_now`, with
/// the error if there is one to say.
pub fn submit(r: &mut ngx_http_request_t, ask: Ask) -> Result<(), Option<SourceError>> {
    if let Err(failed) = ensure_started() {
        let message = format!("measuring on the event loop: {}", failed.reason);
        if failed.log {
            log_alert(r, &format!("memory_status: {message}"));
        }
        return Err(Some(SourceError::new("measuring", message)));
    }
    // Whoever frees the request (a terminated subrequest's parent, the
    // shutdown timer, a client gone) destroys its pool (a subrequest's is its
    // main request's): the cleanup clears the shared cell, so the measuring's
    // result finds the request gone and is dropped.
    let request = Rc::new(Cell::new(r as *mut ngx_http_request_t));
    // SAFETY: a live request's pool; a cleanup without data of its own.
    let cleanup = unsafe { ngx_pool_cleanup_add(r.pool, 0) };
    if cleanup.is_null() {
        return Err(None);
    }
    // SAFETY: the cleanup nginx just made; it runs once, when the pool is
    // destroyed, and takes back the reference given to it here.
    unsafe {
        (*cleanup).data = Rc::into_raw(Rc::clone(&request)).cast_mut().cast();
        (*cleanup).handler = Some(forget_request);
    }
    ANSWERS.with(|a| {
        a.borrow_mut().pending.push(Waiting {
            request,
            ask,
            since: Instant::now(),
        })
    });
    // SAFETY: `r` is a live request; the C side raises its main request's count.
    unsafe { request_bits::ngx_memory_status_main_count_inc(r) };
    begin_next();
    keep_worker_while_waiting();
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

/// Unless a measuring runs for requests: begins one, on the loop, for the
/// pending requests that ask the same measuring as the first of them.
fn begin_next() {
    let batch = ANSWERS.with(|a| {
        let mut a = a.try_borrow_mut().ok()?;
        if a.running.is_some() {
            return None;
        }
        a.pending.retain(|w| !w.request.get().is_null());
        let measuring = a.pending.first()?.ask.measuring;
        let (same, rest): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut a.pending)
            .into_iter()
            .partition(|w| w.ask.measuring == measuring);
        a.pending = rest;
        Some((measuring, same))
    });
    let Some((measuring, same)) = batch else {
        return;
    };
    let mut renderings: Vec<Rendering> = Vec::new();
    let requests = same
        .into_iter()
        .map(|w| {
            let at = renderings.iter().position(|&x| x == w.ask.rendering);
            let at = at.unwrap_or_else(|| {
                renderings.push(w.ask.rendering);
                renderings.len() - 1
            });
            (w, at)
        })
        .collect();
    let id = next_id();
    let mark = alloc_guard::failures();
    let asked = renderings.clone();
    match run_guarded(|| collect::begin(measuring)) {
        Ok((part, job)) => push_work(
            id,
            Box::new(move || collect::answer_work(part, job, &asked)),
        ),
        Err(message) => {
            // Answered as a failed measuring, on the loop's next turn.
            // SAFETY: the cycle's log lives as long as the cycle.
            let log = unsafe { (*ngx_cycle).log };
            ngx_log_error!(NGX_LOG_ALERT, log, "memory_status: panic: {message}");
            queue().done.push((id, None));
            wake();
        }
    }
    ANSWERS.with(|a| {
        a.borrow_mut().running = Some(Running {
            id,
            renderings,
            requests,
            mark,
        })
    });
}

/// Hands a measuring for no request to the thread; `done` runs on the loop
/// with the result. It keeps no worker alive: a worker that exits first drops
/// it. `Err` gives it back when the thread cannot be had.
pub fn submit_background(work: Work, done: Background) -> Result<(), Box<(Work, Background)>> {
    if ensure_started().is_err() {
        return Err(Box::new((work, done)));
    }
    let id = next_id();
    ANSWERS.with(|a| {
        a.borrow_mut().background.push(BackgroundJob {
            id,
            done,
            since: Instant::now(),
        })
    });
    push_work(id, work);
    Ok(())
}

/// Runs a finished background job's `done`, if it is one of them.
fn finish_background(id: u64, finished: &mut Option<Finished>) -> bool {
    let job = ANSWERS.with(|a| {
        let mut a = a.borrow_mut();
        let at = a.background.iter().position(|x| x.id == id)?;
        Some(a.background.swap_remove(at))
    });
    let Some(job) = job else {
        return false;
    };
    let failed = match finished.take() {
        Some(finished) => run_guarded(|| (job.done)(finished)).err(),
        None => Some("while measuring".to_string()),
    };
    if let Some(message) = failed {
        // SAFETY: the cycle's log lives as long as the cycle.
        let log = unsafe { (*ngx_cycle).log };
        ngx_log_error!(NGX_LOG_ALERT, log, "memory_status: panic: {message}");
    }
    true
}

/// This worker's summary, into the registry for the others' answers, unless
/// an allocation failed since the measuring began.
pub fn publish(finished: &Finished, mark: u64) {
    if let Some(summary) = &finished.summary {
        if alloc_guard::failures() == mark {
            registry::publish(summary);
        }
    }
}

/// Sends the `at`th rendering of a finished measuring.
fn respond_with(
    r: &mut ngx_http_request_t,
    finished: &Finished,
    at: usize,
    rendering: Rendering,
    mark: u64,
) -> ngx_int_t {
    #[cfg(feature = "test-panic")]
    super::test_hooks::while_answering();
    match finished.bodies.get(at) {
        Some(body) if alloc_guard::failures() == mark => {
            respond::send(r, NGX_HTTP_OK as usize, rendering.content_type(), body)
        }
        _ => respond::out_of_memory(r),
    }
}

/// Answers every request of a measuring that ended (`None`: it panicked).
fn answer_running(running: Running, finished: Option<Finished>) {
    let Running {
        renderings,
        requests,
        mark,
        ..
    } = running;
    if let Some(finished) = &finished {
        publish(finished, mark);
    }
    for (waiting, at) in requests {
        // SAFETY: not freed (its pool's cleanup would have cleared the cell),
        // and kept from finishing by the raised count.
        let Some(r) = (unsafe { waiting.request.get().as_mut() }) else {
            continue;
        };
        let request: *mut ngx_http_request_t = r;
        let rc = match &finished {
            Some(finished) => match run_guarded(|| {
                // SAFETY: the same live request, used by one closure at a time.
                let r = unsafe { &mut *request };
                respond_with(r, finished, at, renderings[at], mark)
            }) {
                Ok(rc) => rc,
                Err(message) => {
                    log_alert(r, &format!("memory_status: panic: {message}"));
                    NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
                }
            },
            None => {
                log_alert(r, "memory_status: panic while measuring");
                NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
            }
        };
        finalize(r, rc);
    }
}

/// Ends what the handler left open with NGX_DONE (count raised), then runs
/// what that posted (a parent waiting on this subrequest), as nginx's own
/// event handlers do after a request's work.
fn finalize(r: &mut ngx_http_request_t, rc: ngx_int_t) {
    // SAFETY: a live request whose count this module raised.
    unsafe {
        let c = r.connection;
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }
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
        let (id, work) = {
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
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).ok();
        queue().done.push((id, finished));
        wake();
    }
}

/// Wakes the loop: its `on_wake` runs at its next turn.
fn wake() {
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

/// A timer on the wake-up event while any request waits, none otherwise: it
/// fires at the oldest request's deadline (`MEASURING_TIMEOUT` after it
/// arrived), or within `WAITING_TIMER_MS`, whichever comes first. Requests
/// nginx freed meanwhile are forgotten first: they keep no worker.
fn keep_worker_while_waiting() {
    let oldest = ANSWERS.with(|a| match a.try_borrow_mut() {
        Ok(mut a) => {
            let a = &mut *a;
            a.pending.retain(|w| !w.request.get().is_null());
            if let Some(running) = &mut a.running {
                running.requests.retain(|(w, _)| !w.request.get().is_null());
            }
            let running = a
                .running
                .iter()
                .flat_map(|r| r.requests.iter().map(|(w, _)| w));
            Some(a.pending.iter().chain(running).map(|w| w.since).min())
        }
        // Not reached (no borrow is held across a call into nginx); keeping
        // the timer is the safe side.
        Err(_) => None,
    });
    let ev = WAKE_EVENT.load(Ordering::Relaxed);
    if ev.is_null() {
        return;
    }
    let delay_ms = match oldest {
        Some(None) => None,
        Some(Some(since)) => {
            let left = MEASURING_TIMEOUT.saturating_sub(since.elapsed());
            Some((left.as_millis() as ngx_msec_t).clamp(1, WAITING_TIMER_MS))
        }
        None => Some(WAITING_TIMER_MS),
    };
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

/// On the loop: answers every request whose measuring is done (woken by the
/// thread, or by the waiting timer), and begins the next measuring.
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
    for (id, mut finished) in done {
        if finish_background(id, &mut finished) {
            continue;
        }
        let running = ANSWERS.with(|a| {
            let mut a = a.borrow_mut();
            match &a.running {
                Some(running) if running.id == id => a.running.take(),
                _ => None,
            }
        });
        if let Some(running) = running {
            answer_running(running, finished);
        }
    }
    answer_overdue();
    begin_next();
    keep_worker_while_waiting();
}

/// Answers 503 to every request that waited longer than `MEASURING_TIMEOUT`
/// (for its measuring, or for one to begin), and forgets background jobs as
/// late.
fn answer_overdue() {
    let late = |w: &Waiting| w.since.elapsed() >= MEASURING_TIMEOUT;
    let overdue: Vec<Waiting> = ANSWERS.with(|a| {
        let mut a = a.borrow_mut();
        let a = &mut *a;
        a.background
            .retain(|x| x.since.elapsed() < MEASURING_TIMEOUT);
        let (mut overdue, pending): (Vec<Waiting>, Vec<Waiting>) =
            std::mem::take(&mut a.pending).into_iter().partition(late);
        a.pending = pending;
        if let Some(running) = &mut a.running {
            let (gone, kept) = std::mem::take(&mut running.requests)
                .into_iter()
                .partition(|(w, _)| late(w));
            running.requests = kept;
            overdue.extend(gone.into_iter().map(|(w, _): (Waiting, usize)| w));
        }
        overdue
    });
    for waiting in overdue {
        // SAFETY: as in answer_running.
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
        finalize(r, NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }
}
