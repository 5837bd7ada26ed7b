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
//! `collect::Finished`. The thread, its queue and the loop's wake-up channel
//! are `runner`'s; this file is what the requests make of them.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_cycle, ngx_http_finalize_request, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_int_t, ngx_msec_t, ngx_pool_cleanup_add, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_OK,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ALERT,
};
use ngx::ngx_log_error;

use super::collect::{self, Finished, Measuring};
use super::{registry, request_bits, respond, runner};
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
    measuring: Measuring,
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

/// While requests wait, the wake-up channel also carries a timer: nginx's
/// graceful exit waits for timers, so a worker that is shutting down answers
/// its waiting requests before it exits.
const WAITING_TIMER_MS: ngx_msec_t = 1000;

/// How long a request waits for its measuring at most: past it, it is answered
/// 503 and the measuring's result, if it ever comes, is dropped. Measuring takes
/// milliseconds; this bounds the wait should the thread ever stall.
#[cfg(not(feature = "test-panic"))]
const MEASURING_TIMEOUT: Duration = Duration::from_secs(10);
/// The test-only build waits 2 s, so t/10 can prove the bound quickly.
#[cfg(feature = "test-panic")]
const MEASURING_TIMEOUT: Duration = Duration::from_secs(2);

thread_local! {
    static ANSWERS: RefCell<Answers> = RefCell::new(Answers::default());
}

fn next_id() -> u64 {
    ANSWERS.with(|a| {
        let mut a = a.borrow_mut();
        a.last_id += 1;
        a.last_id
    })
}

/// Hands a measuring to the thread.
fn push_work(id: u64, work: Work) {
    runner::push(id, Box::new(move || Box::new(work()) as runner::Output));
}

/// Without the thread: measured, assembled and rendered here, on the loop,
/// with `error` (why not off it) in the answer's `errors`.
pub fn answer_now(
    r: &mut ngx_http_request_t,
    mut ask: Ask,
    error: Option<SourceError>,
) -> ngx_int_t {
    let mark = alloc_guard::failures();
    // The walk's child is waited for off the loop only.
    let walk_asked = std::mem::take(&mut ask.measuring.lua_largest);
    let (mut part, job) = collect::begin(ask.measuring);
    if let Some(error) = error {
        part.add_error(error);
    }
    if walk_asked.is_some() {
        let reason = crate::analysis::lua_walk::WalkError::NeedsThread.to_string();
        part.add_error(SourceError::new("lua.largest", reason));
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
    // SAFETY: a request's handler runs on the loop's thread.
    if let Err(failed) = unsafe { runner::ensure_started(on_done) } {
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
    let waiting = Waiting {
        request,
        ask,
        since: Instant::now(),
    };
    ANSWERS.with(|a| {
        let mut a = a.borrow_mut();
        if let Some(waiting) = join_walk(&mut a, waiting) {
            a.pending.push(waiting);
        }
    });
    // SAFETY: `r` is a live request; the C side raises its main request's count.
    unsafe { request_bits::ngx_memory_status_main_count_inc(r) };
    begin_next();
    keep_worker_while_waiting();
    Ok(())
}

/// A request for the Lua heap's walk joins the same walk when one runs and
/// renders what it asks (one walk at a time: a walk holds the loop for its
/// fork and takes seconds); any other waits for the next measuring. Gives
/// the request back when it did not join.
fn join_walk(a: &mut Answers, waiting: Waiting) -> Option<Waiting> {
    let Some(running) = a.running.as_mut() else {
        return Some(waiting);
    };
    let ask = waiting.ask;
    // The same walk under a bound at least the request's: its fork was made,
    // or would have been refused to the request too (a larger bound waits
    // for its own).
    let without_bound = |m: Measuring| Measuring {
        lua_largest: m.lua_largest.map(|_| 0),
        ..m
    };
    let (Some(asked), Some(running_bound)) =
        (ask.measuring.lua_largest, running.measuring.lua_largest)
    else {
        return Some(waiting);
    };
    if running_bound < asked || without_bound(running.measuring) != without_bound(ask.measuring) {
        return Some(waiting);
    }
    match running.renderings.iter().position(|&x| x == ask.rendering) {
        Some(at) => {
            running.requests.push((waiting, at));
            None
        }
        None => Some(waiting),
    }
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
            runner::fail(id);
        }
    }
    ANSWERS.with(|a| {
        a.borrow_mut().running = Some(Running {
            id,
            measuring,
            renderings,
            requests,
            mark,
        })
    });
}

/// Whether the measuring thread runs (started now if it can be).
pub fn thread_available() -> bool {
    // SAFETY: called on the loop, as `submit_background` is.
    unsafe { runner::ensure_started(on_done) }.is_ok()
}

/// Hands a measuring for no request to the thread; `done` runs on the loop
/// with the result. It keeps no worker alive: a worker that exits first drops
/// it. `Err` gives it back when the thread cannot be had.
pub fn submit_background(work: Work, done: Background) -> Result<(), Box<(Work, Background)>> {
    // SAFETY: the timers that hand background work over run on the loop.
    if unsafe { runner::ensure_started(on_done) }.is_err() {
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
    let delay_ms = match oldest {
        Some(None) => None,
        Some(Some(since)) => {
            let left = MEASURING_TIMEOUT.saturating_sub(since.elapsed());
            Some((left.as_millis() as ngx_msec_t).clamp(1, WAITING_TIMER_MS))
        }
        None => Some(WAITING_TIMER_MS),
    };
    // SAFETY: this runs on the loop (a request's handler or the runner's
    // wake-up).
    unsafe { runner::set_timer(delay_ms) };
}

/// On the loop: answers every request whose measuring is done (woken by the
/// thread, or by the waiting timer), and begins the next measuring.
fn on_done() {
    for (id, output) in runner::take_done() {
        // A job of ours gives a `Finished`; anything else counts as failed.
        let mut finished = output
            .and_then(|o| o.downcast::<Finished>().ok())
            .map(|b| *b);
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
