//! The Lua heap walked from its roots, in a copy of the worker
//! (`?lua_largest=1`).
//!
//! A walk cannot be cut into slices on the event loop (the heap changes
//! between them), and a whole one takes seconds on a big heap. So the loop
//! only forks: the child is a copy-on-write snapshot of the worker, which it
//! walks through LuaJIT's own API with the collector stopped (nothing in the
//! snapshot runs or frees), then it sends sizes, counts and paths back over a
//! pipe and exits. The measuring thread reads the pipe and reaps the child.
//!
//! The child is made with `clone` and no exit signal: nginx's SIGCHLD handler
//! (`waitpid(-1)`) neither reaps it nor logs it, and only `__WCLONE` waits
//! for it. It has one thread; glibc's malloc locks may have been held by
//! another thread of the parent at the fork, so the child's Rust allocations
//! go to an arena of its own (`alloc_guard::use_child_arena`) and LuaJIT's
//! to its own allocator. It dies with its parent, blocks signals, dumps no
//! core, is the OOM killer's first choice, and is killed at its deadline.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::analysis::lua_walk::{
    merge_finalizers, push_string_key, replace_light_keys, write_walks, FinalizerGroup, ForkCost,
    ForkRates, VmWalk, WalkError, WalkOutcome, WalkedObject, Walks, CDATA, FUNCTION, SENT_PER_KIND,
    STRING, TABLE, THREAD, USERDATA, WALK_KINDS,
};
use crate::sources::escape::escape;

/// Objects a walk reaches at most; the child's memory grows with them
/// (about 100 bytes each).
const MAX_OBJECTS: usize = 2_000_000;
/// The child's own time bound, and the parent's, past which it kills it.
/// Both below a request's 10 s wait for its measuring, so that the walk's
/// own reason reaches the answer.
const CHILD_MAX_TIME: Duration = Duration::from_secs(6);
const DEADLINE: Duration = Duration::from_secs(8);
/// The child's last resort, should it hang: SIGALRM's default action ends it.
const CHILD_ALARM_SECONDS: u32 = 12;
/// The child's arena (mapped without reserve: only what it uses is charged).
const ARENA_BYTES: usize = 512 << 20;
/// What the parent reads at most from the pipe.
const MAX_OUTPUT_BYTES: usize = 4 << 20;

/// `lua_type`'s codes (lua.h; 10 is LuaJIT's for cdata).
const LUA_TBOOLEAN: c_int = 1;
const LUA_TLIGHTUSERDATA: c_int = 2;
const LUA_TNUMBER: c_int = 3;
const LUA_TSTRING: c_int = 4;
const LUA_TTABLE: c_int = 5;
const LUA_TFUNCTION: c_int = 6;
const LUA_TUSERDATA: c_int = 7;
const LUA_TTHREAD: c_int = 8;
const LUA_TCDATA: c_int = 10;

/// The walk's kind of a value of that `lua_type`; `None` for values that are
/// no object (nil, booleans, numbers, light userdata).
fn kind_of_type(t: c_int) -> Option<usize> {
    Some(match t {
        LUA_TTABLE => TABLE,
        LUA_TSTRING => STRING,
        LUA_TFUNCTION => FUNCTION,
        LUA_TUSERDATA => USERDATA,
        LUA_TTHREAD => THREAD,
        LUA_TCDATA => CDATA,
        _ => return None,
    })
}

const LUA_REGISTRYINDEX: c_int = -10000;
const LUA_GLOBALSINDEX: c_int = -10002;
const LUA_GCSTOP: c_int = 0;

/// `lua_Debug` of Lua 5.1, as LuaJIT declares it.
#[repr(C)]
struct LuaDebug {
    event: c_int,
    name: *const c_char,
    namewhat: *const c_char,
    what: *const c_char,
    source: *const c_char,
    currentline: c_int,
    nups: c_int,
    linedefined: c_int,
    lastlinedefined: c_int,
    short_src: [c_char; 60],
    i_ci: c_int,
}

type L = *mut c_void;

/// The part of LuaJIT's API the walk calls, looked up in the parent (the
/// child takes no lock of the dynamic loader's).
struct Api {
    gettop: unsafe extern "C-unwind" fn(L) -> c_int,
    settop: unsafe extern "C-unwind" fn(L, c_int),
    pushvalue: unsafe extern "C-unwind" fn(L, c_int),
    type_: unsafe extern "C-unwind" fn(L, c_int) -> c_int,
    topointer: unsafe extern "C-unwind" fn(L, c_int) -> *const c_void,
    tolstring: unsafe extern "C-unwind" fn(L, c_int, *mut usize) -> *const c_char,
    tonumber: unsafe extern "C-unwind" fn(L, c_int) -> f64,
    toboolean: unsafe extern "C-unwind" fn(L, c_int) -> c_int,
    objlen: unsafe extern "C-unwind" fn(L, c_int) -> usize,
    pushnil: unsafe extern "C-unwind" fn(L),
    next: unsafe extern "C-unwind" fn(L, c_int) -> c_int,
    rawgeti: unsafe extern "C-unwind" fn(L, c_int, c_int),
    rawseti: unsafe extern "C-unwind" fn(L, c_int, c_int),
    rawget: unsafe extern "C-unwind" fn(L, c_int),
    pushlstring: unsafe extern "C-unwind" fn(L, *const c_char, usize),
    createtable: unsafe extern "C-unwind" fn(L, c_int, c_int),
    getmetatable: unsafe extern "C-unwind" fn(L, c_int) -> c_int,
    getfenv: unsafe extern "C-unwind" fn(L, c_int),
    getupvalue: unsafe extern "C-unwind" fn(L, c_int, c_int) -> *const c_char,
    getinfo: unsafe extern "C-unwind" fn(L, *const c_char, *mut LuaDebug) -> c_int,
    getstack: unsafe extern "C-unwind" fn(L, c_int, *mut LuaDebug) -> c_int,
    getlocal: unsafe extern "C-unwind" fn(L, *const LuaDebug, c_int) -> *const c_char,
    tothread: unsafe extern "C-unwind" fn(L, c_int) -> L,
    xmove: unsafe extern "C-unwind" fn(L, L, c_int),
    checkstack: unsafe extern "C-unwind" fn(L, c_int) -> c_int,
    gc: unsafe extern "C-unwind" fn(L, c_int, c_int) -> c_int,
    cpcall: unsafe extern "C-unwind" fn(
        L,
        unsafe extern "C-unwind" fn(L) -> c_int,
        *mut c_void,
    ) -> c_int,
    touserdata: unsafe extern "C-unwind" fn(L, c_int) -> *mut c_void,
}

/// LuaJIT's API, looked up once per process (before any fork: the child
/// reads it from here, never through dlsym and the loader's lock). In
/// single-process mode a reload can unload the Lua module and load it
/// elsewhere: a LuaJIT no longer where it was found is not called.
static API: std::sync::OnceLock<Result<Api, WalkError>> = std::sync::OnceLock::new();

fn api() -> Result<&'static Api, WalkError> {
    let api = API.get_or_init(find_api).as_ref().map_err(Clone::clone)?;
    // SAFETY: dlsym on a NUL-terminated name.
    let gc_now = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"lua_gc".as_ptr()) };
    if api.gc as usize != gc_now as usize {
        return Err(WalkError::LoadedElsewhere);
    }
    Ok(api)
}

/// The function LuaJIT exports as `name`.
///
/// # Safety
/// `T` is a function pointer of that function's C signature.
unsafe fn symbol<T: Copy>(name: &'static CStr) -> Result<T, WalkError> {
    // SAFETY: dlsym on a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    if p.is_null() || size_of::<T>() != size_of::<*mut c_void>() {
        return Err(WalkError::MissingSymbol(
            name.to_str().unwrap_or("a function"),
        ));
    }
    // SAFETY: a function pointer of the caller's signature, the same size.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn find_api() -> Result<Api, WalkError> {
    // SAFETY: each field's type is the C signature LuaJIT exports under
    // that name (lua.h, lauxlib.h).
    unsafe {
        Ok(Api {
            gettop: symbol(c"lua_gettop")?,
            settop: symbol(c"lua_settop")?,
            pushvalue: symbol(c"lua_pushvalue")?,
            type_: symbol(c"lua_type")?,
            topointer: symbol(c"lua_topointer")?,
            tolstring: symbol(c"lua_tolstring")?,
            tonumber: symbol(c"lua_tonumber")?,
            toboolean: symbol(c"lua_toboolean")?,
            objlen: symbol(c"lua_objlen")?,
            pushnil: symbol(c"lua_pushnil")?,
            next: symbol(c"lua_next")?,
            rawgeti: symbol(c"lua_rawgeti")?,
            rawseti: symbol(c"lua_rawseti")?,
            rawget: symbol(c"lua_rawget")?,
            pushlstring: symbol(c"lua_pushlstring")?,
            createtable: symbol(c"lua_createtable")?,
            getmetatable: symbol(c"lua_getmetatable")?,
            getfenv: symbol(c"lua_getfenv")?,
            getupvalue: symbol(c"lua_getupvalue")?,
            getinfo: symbol(c"lua_getinfo")?,
            getstack: symbol(c"lua_getstack")?,
            getlocal: symbol(c"lua_getlocal")?,
            tothread: symbol(c"lua_tothread")?,
            xmove: symbol(c"lua_xmove")?,
            checkstack: symbol(c"lua_checkstack")?,
            gc: symbol(c"lua_gc")?,
            cpcall: symbol(c"lua_cpcall")?,
            touserdata: symbol(c"lua_touserdata")?,
        })
    }
}

/// `Walk::stopped` when the deadline passed.
const TIMED_OUT: &str = "its time ran out";

/// Whether this worker has a walking child (set by `start`, cleared when the
/// child is reaped).
static WALKING: AtomicBool = AtomicBool::new(false);

/// Whether a child of this worker walks now.
pub fn walking() -> bool {
    WALKING.load(Ordering::Acquire)
}

/// A walk under way: the child and the pipe it answers on.
pub struct Walk {
    /// The child while it is not reaped.
    pid: Option<libc::pid_t>,
    /// The VMs walked (their main threads): a previous walk of another VM
    /// (after a reload in single-process mode) is no baseline.
    vms: [Option<usize>; 2],
    /// Why the parent killed it, when it did.
    stopped: Option<&'static str>,
    pipe: OwnedFd,
    started: Instant,
    fork: ForkCost,
}

/// This worker's recent forks, whose costs the next one's estimate scales
/// (loop thread only).
static FORK_RATES: std::sync::Mutex<ForkRates> = std::sync::Mutex::new(ForkRates::new());

/// This process's pages whose page-table entries a fork copies one by one:
/// its private resident pages (resident less file and shmem, from `statm`),
/// and those of its private writable file mappings (a fork copies a file
/// mapping's entries once a page of it was written; counted whole, at most
/// all file pages: `statm` does not tell them apart).
fn private_pages() -> Result<u64, WalkError> {
    let unreadable = || {
        WalkError::Start(
            "/proc/self/statm is unreadable: the fork's stall cannot be estimated".into(),
        )
    };
    let text = crate::sources::procfs::read_proc_file("/proc/self/statm", 128)
        .map_err(|_| unreadable())?;
    let pages = crate::sources::procfs::parse_statm(&text).ok_or_else(unreadable)?;
    // SAFETY: sysconf has no precondition.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let file_private_bytes: u64 =
        crate::sources::procfs::read_proc_file("/proc/self/maps", 64 << 10)
            .map(|text| {
                let (maps, _) = crate::sources::procfs::Mapping::parse_all(&text);
                maps.iter()
                    .filter(|m| m.write && !m.shared && m.inode != 0)
                    .map(|m| m.size_bytes())
                    .sum()
            })
            .unwrap_or(0);
    Ok(pages.resident - pages.shared + (file_private_bytes / page_bytes).min(pages.shared))
}

/// The calling thread's CPU time, in microseconds.
fn thread_cpu_us() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a clock read into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// Whether the fork fits in `max_stall_us`; its estimate when it does.
fn check_stall(max_stall_us: u64) -> Result<(u64, u64), WalkError> {
    let pages = private_pages()?;
    let estimate_us = FORK_RATES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .estimate_us(pages, super::clock::now_ms());
    if estimate_us > max_stall_us {
        // SAFETY: sysconf has no precondition.
        let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        return Err(WalkError::StallBound {
            estimate_us,
            private_mib: pages.saturating_mul(page_bytes) >> 20,
            max_stall_us,
        });
    }
    Ok((pages, estimate_us))
}

/// Forks the walking child for the VMs given (`[http, stream]` main
/// threads). On the loop: this costs the fork, a copy of the page tables,
/// made only when its estimate is within `max_stall_us`.
///
/// # Safety
/// Each state is a live `lua_State` of the VM's main thread, and this runs
/// on the loop's thread between events (no Lua code runs in this process).
pub unsafe fn start(vms: [Option<L>; 2], max_stall_us: u64) -> Result<Walk, WalkError> {
    let api = api()?;
    // One child at a time per worker: another one alive would make the
    // worker's pages shared, its PSS smaller, and cost twice.
    if WALKING.swap(true, Ordering::AcqRel) {
        return Err(WalkError::Busy);
    }
    let not_started = |e: WalkError| {
        WALKING.store(false, Ordering::Release);
        e
    };
    let (pages, estimate_us) = check_stall(max_stall_us).map_err(not_started)?;
    let mut fds = [0; 2];
    // SAFETY: a pipe into an array of two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let error = std::io::Error::last_os_error().to_string();
        return Err(not_started(WalkError::Start(error)));
    }
    // SAFETY: two new descriptors, each owned once.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let parent = std::process::id() as libc::pid_t;
    let cpu_before_us = thread_cpu_us();
    let started = Instant::now();
    // SAFETY: clone with no flag and no exit signal is a fork whose child
    // nobody is told of; the child runs only `child` and `_exit`s.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            0 as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        drop(read);
        // SAFETY: this is the child, a copy with one thread; `child` never returns.
        unsafe {
            child(
                api,
                vms,
                write.as_raw_fd(),
                parent,
                started + CHILD_MAX_TIME,
            )
        }
    }
    let fork = ForkCost {
        stall_us: started.elapsed().as_micros() as u64,
        estimate_us,
    };
    if pid < 0 {
        let error = std::io::Error::last_os_error().to_string();
        WALKING.store(false, Ordering::Release);
        return Err(WalkError::Start(error));
    }
    FORK_RATES.lock().unwrap_or_else(|p| p.into_inner()).record(
        pages,
        thread_cpu_us().saturating_sub(cpu_before_us),
        super::clock::now_ms(),
    );
    Ok(Walk {
        pid: Some(pid as libc::pid_t),
        vms: vms.map(|l| l.map(|l| l as usize)),
        stopped: None,
        pipe: read,
        started,
        fork,
    })
}

impl Walk {
    /// Waits (off the loop) for the child's walks, at most until the
    /// deadline; reaps the child.
    pub fn finish(mut self) -> Result<(Walks, ForkCost), WalkError> {
        let (out, ended) = self.read_pipe();
        let status = self.reap(!ended);
        if self.stopped == Some(TIMED_OUT) {
            return Err(WalkError::TimedOut {
                seconds: DEADLINE.as_secs(),
            });
        }
        let text = String::from_utf8_lossy(&out);
        match crate::analysis::lua_walk::parse_walks(&text) {
            Some(walks) => Ok((walks, self.fork)),
            None => Err(WalkError::Ended(match self.stopped {
                Some(why) => format!("the child was stopped: {why}"),
                None => describe_status(status),
            })),
        }
    }

    /// What the child sent, until it closed the pipe (`true`: it is
    /// exiting) or the walk was given up (`stopped` says why: it is then
    /// killed, never waited for).
    fn read_pipe(&mut self) -> (Vec<u8>, bool) {
        let mut out: Vec<u8> = Vec::new();
        let interrupted =
            || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted;
        loop {
            let left = DEADLINE.saturating_sub(self.started.elapsed());
            if left.is_zero() {
                self.stopped = Some(TIMED_OUT);
                return (out, false);
            }
            let mut poll = libc::pollfd {
                fd: self.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as c_int) };
            if ready < 0 && !interrupted() {
                self.stopped = Some("its pipe could not be polled");
                return (out, false);
            }
            if ready <= 0 {
                continue;
            }
            let mut buf = [0u8; 16 << 10];
            // SAFETY: reads into a buffer of that length.
            let n =
                unsafe { libc::read(self.pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && interrupted() {
                continue;
            }
            if n <= 0 {
                return (out, n == 0);
            }
            if out.len() + n as usize > MAX_OUTPUT_BYTES || out.try_reserve(n as usize).is_err() {
                self.stopped = Some("its answer passed 4 MiB");
                return (out, false);
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    /// Kills the child when asked, and waits for it (it has closed the pipe
    /// or been killed: this is short).
    fn reap(&mut self, kill: bool) -> c_int {
        let Some(pid) = self.pid.take() else {
            return 0;
        };
        if kill {
            // SAFETY: our own child, not yet reaped: its pid is not reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own clone child.
            let got = unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE) };
            if got >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                WALKING.store(false, Ordering::Release);
                return status;
            }
        }
    }
}

fn describe_status(status: c_int) -> String {
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        "the child was killed (signal 9): when memory runs short the OOM killer takes it first"
            .into()
    } else if libc::WIFSIGNALED(status) {
        format!("the child was killed by signal {}", libc::WTERMSIG(status))
    } else {
        match libc::WEXITSTATUS(status) {
            EXIT_NO_ARENA => "the child could not map its memory".into(),
            EXIT_ABI => {
                "the VM's layout is not one this module knows (LuaJIT 2.1, with or without GC64)"
                    .into()
            }
            EXIT_PANIC => "the child failed".into(),
            EXIT_LUA_MEMORY => {
                "the Lua heap had no room for the walk (LuaJIT's memory error)".into()
            }
            EXIT_LUA_ERROR => "LuaJIT raised an error in the walk".into(),
            code => format!("the child exited with code {code}"),
        }
    }
}

const EXIT_NO_ARENA: c_int = 3;
const EXIT_ABI: c_int = 4;
const EXIT_PANIC: c_int = 5;
const EXIT_ORPHAN: c_int = 6;
const EXIT_LUA_MEMORY: c_int = 7;
const EXIT_LUA_ERROR: c_int = 8;
/// `lua_cpcall`'s status for a memory error.
const LUA_ERRMEM: c_int = 4;

/// The child's whole life.
///
/// # Safety
/// Called once, in the child just forked, with `start`'s states.
unsafe fn child(
    api: &Api,
    vms: [Option<L>; 2],
    out: c_int,
    parent: libc::pid_t,
    deadline: Instant,
) -> ! {
    // SAFETY: this is the child, with one thread, before it allocates.
    unsafe { isolate(out, parent) };
    let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut walks: Walks = [None, None];
        for (slot, l) in walks.iter_mut().zip(vms) {
            if let Some(l) = l {
                // SAFETY: a live state of the snapshot, which nothing else runs.
                *slot = Some(unsafe { walk_protected(api, l, parent, deadline) }?);
            }
        }
        Ok(walks)
    }));
    let code = match walked {
        Ok(Ok(walks)) => {
            let mut text = String::new();
            write_walks(&walks, &mut text);
            write_all(out, text.as_bytes());
            0
        }
        Ok(Err(code)) => code,
        Err(_) => EXIT_PANIC,
    };
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(code) }
}

/// Makes the child harmless to its parent and the host: signals blocked,
/// no core, the OOM killer's first choice, nginx's descriptors closed, its
/// own allocator; `_exit`s when any of it cannot be had.
///
/// # Safety
/// In the child just forked, with one thread, before it allocates.
unsafe fn isolate(out: c_int, parent: libc::pid_t) {
    // SAFETY: calls on this process alone, with valid arguments.
    unsafe {
        // Every signal blocked but SIGALRM, restored to its default (the
        // end of the process) and set as a last resort. No death signal: a
        // worker that dies hands its children to the master when nginx is
        // PID 1 (a container), which would log a killed one as an unknown
        // process; the walk checks its parent instead and ends quietly.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, libc::SIGALRM);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::alarm(CHILD_ALARM_SECONDS);
        if libc::getppid() != parent {
            libc::_exit(EXIT_ORPHAN);
        }
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        // Nor through a piped core_pattern, which RLIMIT_CORE does not stop.
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, b"1000".as_ptr().cast(), 4);
            libc::close(fd);
        }
        // Nginx's descriptors are closed in the copy: a listening socket the
        // parent closes (a reload) is then not kept open by the child.
        close_all_but(out);
        if !crate::alloc_guard::use_child_arena(ARENA_BYTES) {
            libc::_exit(EXIT_NO_ARENA);
        }
    }
}

/// Closes every descriptor but `keep`: `close_range` (Linux 5.9), else one
/// by one up to the descriptor limit.
fn close_all_but(keep: c_int) {
    // SAFETY: closing descriptors of this process (the child's own table).
    unsafe {
        let below = libc::syscall(libc::SYS_close_range, 0u32, (keep - 1).max(0) as u32, 0u32);
        let above = libc::syscall(libc::SYS_close_range, keep as u32 + 1, u32::MAX, 0u32);
        if below == 0 && above == 0 {
            return;
        }
        let limit = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as c_int;
        for fd in (0..limit).filter(|&fd| fd != keep) {
            libc::close(fd);
        }
    }
}

fn write_all(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// The sizes LuaJIT gives its objects, by ABI (lj_obj.h).
struct Layout {
    str_header_bytes: u64,
    tab_header_bytes: u64,
    tab_colo_offset: usize,
    tab_asize_offset: usize,
    tab_hmask_offset: usize,
    node_bytes: u64,
    lua_func_header_bytes: u64,
    lua_upvalue_ref_bytes: u64,
    c_func_header_bytes: u64,
    udata_header_bytes: u64,
    thread_header_bytes: u64,
    thread_stacksize_offset: usize,
    func_ffid_offset: usize,
    cdata_header_bytes: usize,
    cdata_marked_offset: usize,
    /// Where an object's type byte is.
    gct_offset: usize,
    /// An `MRef`'s width: a pointer in GC64, 32 bits without.
    mref_bytes: usize,
    thread_glref_offset: usize,
    thread_top_offset: usize,
    tab_node_offset: usize,
}

const GC64: Layout = Layout {
    str_header_bytes: 24,
    tab_header_bytes: 64,
    tab_colo_offset: 11,
    tab_asize_offset: 48,
    tab_hmask_offset: 52,
    node_bytes: 24,
    lua_func_header_bytes: 40,
    lua_upvalue_ref_bytes: 8,
    c_func_header_bytes: 48,
    udata_header_bytes: 48,
    thread_header_bytes: 112,
    thread_stacksize_offset: 88,
    func_ffid_offset: 10,
    cdata_header_bytes: 16,
    cdata_marked_offset: 8,
    gct_offset: 9,
    mref_bytes: 8,
    thread_glref_offset: 16,
    thread_top_offset: 40,
    tab_node_offset: 40,
};

const NON_GC64: Layout = Layout {
    str_header_bytes: 20,
    tab_header_bytes: 32,
    tab_colo_offset: 7,
    tab_asize_offset: 24,
    tab_hmask_offset: 28,
    node_bytes: 24,
    lua_func_header_bytes: 20,
    lua_upvalue_ref_bytes: 4,
    c_func_header_bytes: 32,
    udata_header_bytes: 24,
    thread_header_bytes: 80,
    thread_stacksize_offset: 56,
    func_ffid_offset: 6,
    cdata_header_bytes: 8,
    cdata_marked_offset: 4,
    gct_offset: 5,
    mref_bytes: 4,
    thread_glref_offset: 8,
    thread_top_offset: 24,
    tab_node_offset: 20,
};

/// LuaJIT's type tags (lj_obj.h), as 32-bit values.
const TAG_FUNCTION: u32 = !8;
const TAG_CDATA: u32 = !10;
/// GC64 keeps a TValue's tag in its top 17 bits and its pointer below.
const GC64_POINTER_MASK: u64 = (1 << 47) - 1;

impl Layout {
    /// An `MRef` at `p`.
    ///
    /// # Safety
    /// `p .. p + mref_bytes` is readable.
    unsafe fn mref(&self, p: usize) -> usize {
        // SAFETY: the caller's contract.
        unsafe {
            match self.mref_bytes {
                8 => std::ptr::read_unaligned(p as *const u64) as usize,
                _ => std::ptr::read_unaligned(p as *const u32) as usize,
            }
        }
    }

    /// The tag and GC object of the TValue at `p`.
    ///
    /// # Safety
    /// `p .. p + 8` is a TValue.
    unsafe fn tvalue(&self, p: usize) -> (u32, usize) {
        // SAFETY: the caller's contract.
        let w = unsafe { std::ptr::read_unaligned(p as *const u64) };
        match self.mref_bytes {
            8 => (
                (w >> 47) as u32 | 0xFFFE_0000,
                (w & GC64_POINTER_MASK) as usize,
            ),
            _ => ((w >> 32) as u32, w as u32 as usize),
        }
    }

    /// A TValue holding the GC object `gc` of type `tag` (as `setgcV`).
    fn tvalue_of(&self, tag: u32, gc: usize) -> u64 {
        match self.mref_bytes {
            8 => ((u64::from(tag) & 0x1FFFF) << 47) | gc as u64,
            _ => (u64::from(tag) << 32) | gc as u64,
        }
    }
}

/// Copies `buf.len()` bytes at `address` of this process; `false` where they
/// are not all mapped (the kernel says so instead of a fault).
fn read_own(address: usize, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut c_void,
        iov_len: buf.len(),
    };
    // The pid from the kernel: a glibc before 2.25 caches it, and a raw
    // `clone` leaves the child the parent's.
    // SAFETY: getpid has no precondition.
    let pid = unsafe { libc::syscall(libc::SYS_getpid) } as libc::pid_t;
    // SAFETY: one local buffer we own; the kernel checks the remote range.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

/// A native-endian word at `at` of `bytes`.
fn word_at(bytes: &[u8], at: usize) -> usize {
    let mut w = [0; size_of::<usize>()];
    w.copy_from_slice(&bytes[at..at + size_of::<usize>()]);
    usize::from_ne_bytes(w)
}

/// The FFI's finalizer table (`CTState.finalizer`: cdata to finalizer, which
/// no root reaches), past the API: `global_State.ctype_state` is the word of
/// the global state pointing at a `CTState` whose `g` is this global state and
/// whose `finalizer` and `miscmap` are tables (lj_ctype.h: `tab`, `top`,
/// `sizetab`, `L` at 16, `g` at 24, `finalizer` at 32, `miscmap` at 40; `L`
/// is the last thread that used the FFI, maybe freed since: not looked at).
/// Each candidate is read by `process_vm_readv` first, so none is followed
/// before it is known mapped. `None` when the FFI was never loaded.
///
/// # Safety
/// `l` is a live `lua_State` of the snapshot of `y`'s ABI.
unsafe fn finalizer_table(y: &Layout, l: L) -> Option<usize> {
    // SAFETY: `glref` lies in the thread's header (the caller's contract).
    let g = unsafe { y.mref(l as usize + y.thread_glref_offset) };
    let mut global = [0u8; 1024];
    if !read_own(g, &mut global) {
        return None;
    }
    for at in (0..global.len()).step_by(y.mref_bytes) {
        let mut candidate = [0u8; 8];
        candidate[..y.mref_bytes].copy_from_slice(&global[at..at + y.mref_bytes]);
        let cts = u64::from_le_bytes(candidate) as usize;
        let mut head = [0u8; 48];
        if cts == 0 || cts % 8 != 0 || !read_own(cts, &mut head) || word_at(&head, 24) != g {
            continue;
        }
        let is_table = |p: usize| {
            let mut gct = [0u8; 1];
            p != 0 && read_own(p + y.gct_offset, &mut gct) && gct[0] == 11
        };
        let (table, miscmap) = (word_at(&head, 32), word_at(&head, 40));
        if is_table(table) && is_table(miscmap) {
            return Some(table);
        }
    }
    None
}

/// Who frees a group of cdata: a Lua function's code, a C function, another
/// callable value by its kind, or one past the first `MAX_FINALIZERS`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finalizer {
    Lua(*const c_char, c_int),
    CFunction,
    CPointer(usize),
    Kind(&'static str),
    Other,
}

/// Finalizers kept apart at most (the rest count together, as `Other`).
const MAX_FINALIZERS: usize = 256;
const TAG_NIL: u32 = !0;
const TAG_TABLE: u32 = !11;
const TAG_USERDATA: u32 = !12;

/// How an object was reached from its parent.
#[derive(Clone, Copy)]
enum Edge {
    Root(&'static str),
    Key(*const u8, usize),
    Index(f64),
    Bool(bool),
    KeyOfKind(usize),
    LightKey(usize),
    AsKey,
    Metatable,
    Environment,
    Upvalue(*const c_char, c_int),
    Slot(c_int),
    Local(*const c_char, Location),
    Frame(c_int, Location),
}

/// A function's chunk and line (`source` is LuaJIT's, alive in the snapshot).
#[derive(Clone, Copy)]
struct Location {
    source: *const c_char,
    line: c_int,
    c: bool,
}

const NO_PARENT: u32 = u32::MAX;

struct Node {
    parent: u32,
    edge: Edge,
    kind: u8,
    own: u64,
    retained: u64,
    entries: u64,
    location: Option<Location>,
}

/// Pointers seen, in an open-addressed table (no hasher state to seed).
struct Seen {
    keys: Vec<usize>,
    len: usize,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            keys: vec![0; 1 << 16],
            len: 0,
        }
    }

    /// Inserts `p`; false when it was there.
    fn insert(&mut self, p: usize) -> bool {
        if self.len * 2 >= self.keys.len() {
            let doubled = vec![0; self.keys.len() * 2];
            let old = std::mem::replace(&mut self.keys, doubled);
            self.len = 0;
            for k in old.into_iter().filter(|&k| k != 0) {
                self.insert(k);
            }
        }
        let mask = self.keys.len() - 1;
        let mut i = (p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & mask;
        loop {
            match self.keys[i] {
                0 => {
                    self.keys[i] = p;
                    self.len += 1;
                    return true;
                }
                k if k == p => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn contains(&self, p: usize) -> bool {
        let mask = self.keys.len() - 1;
        let mut i = (p.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) & mask;
        loop {
            match self.keys[i] {
                0 => return false,
                k if k == p => return true,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

struct Walker<'a> {
    api: &'a Api,
    l: L,
    layout: &'static Layout,
    queue: c_int,
    nodes: Vec<Node>,
    seen: Seen,
    /// Whether a value can be put on the stack by its address (`push_gc`).
    pushes: bool,
    types: [(u64, u64); 6],
    truncated: bool,
    started: Instant,
}

/// What `walk_protected` hands to the walk inside `lua_cpcall`, and back.
struct Protected<'a> {
    api: &'a Api,
    parent: libc::pid_t,
    deadline: Instant,
    walk: Result<VmWalk, c_int>,
}

/// Walks one VM inside `lua_cpcall`: an error LuaJIT raises (out of memory
/// for the walk's own queue) ends the walk with its status, never the child
/// by an exception Rust cannot catch.
///
/// # Safety
/// As `walk_vm`.
unsafe fn walk_protected(
    api: &Api,
    l: L,
    parent: libc::pid_t,
    deadline: Instant,
) -> Result<VmWalk, c_int> {
    /// # Safety
    /// Called by `lua_cpcall` with our `Protected` as its light userdata.
    unsafe extern "C-unwind" fn run(l: L) -> c_int {
        // SAFETY: `lua_cpcall` passes our `Protected` at index 1, alive for
        // the call; `API` was looked up before the fork (no dlsym in the
        // child: the loader's lock). A panic is caught here: LuaJIT would
        // take it for a foreign exception.
        unsafe {
            let Some(Ok(api)) = API.get() else { return 0 };
            let p = &mut *(api.touserdata)(l, 1).cast::<Protected>();
            let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                walk_vm(p.api, l, p.parent, p.deadline)
            }));
            p.walk = walked.unwrap_or(Err(EXIT_PANIC));
        }
        0
    }
    let mut p = Protected {
        api,
        parent,
        deadline,
        walk: Err(EXIT_LUA_ERROR),
    };
    // SAFETY: the state is live (the caller's contract); `p` outlives the call.
    let status = unsafe { (api.cpcall)(l, run, (&mut p as *mut Protected).cast()) };
    match status {
        0 => p.walk,
        LUA_ERRMEM => Err(EXIT_LUA_MEMORY),
        _ => Err(EXIT_LUA_ERROR),
    }
}

/// Walks one VM of the snapshot; `Err` with the child's exit code when its
/// ABI is not known or its parent is gone.
///
/// # Safety
/// `l` is the VM's main thread, in a child that nothing else runs in.
unsafe fn walk_vm(
    api: &Api,
    l: L,
    parent: libc::pid_t,
    deadline: Instant,
) -> Result<VmWalk, c_int> {
    let started = Instant::now();
    // SAFETY: the API on a live state of this single-threaded snapshot.
    unsafe {
        (api.gc)(l, LUA_GCSTOP, 0);
        (api.checkstack)(l, 16);
        let layout = abi(api, l).ok_or(EXIT_ABI)?;
        (api.createtable)(l, 0, 0);
        let queue = (api.gettop)(l);
        let pushes = can_push(api, l, layout);
        let mut w = Walker {
            api,
            l,
            layout,
            queue,
            // Reserved whole in the arena (its pages are charged as they are
            // used): growing would leave each old copy behind in it.
            nodes: Vec::with_capacity(MAX_OBJECTS),
            seen: Seen::new(),
            pushes,
            types: [(0, 0); 6],
            truncated: false,
            started,
        };
        w.roots();
        let mut i = 0;
        while i < w.nodes.len() {
            if i % 1024 == 0 {
                if libc::getppid() != parent {
                    return Err(EXIT_ORPHAN);
                }
                if Instant::now() > deadline {
                    w.truncated = true;
                    break;
                }
            }
            if w.nodes[i].kind as usize != STRING {
                (api.rawgeti)(l, queue, i as c_int + 1);
                w.expand(i as u32);
                (api.settop)(l, queue);
            }
            i += 1;
        }
        let finalizers = w.finalizers(parent, deadline);
        let mut walk = w.finish();
        walk.finalizers = finalizers;
        Ok(walk)
    }
}

/// Whether `L->top` is where `y` says: a push moves it by one TValue.
///
/// # Safety
/// As `walk_vm`.
unsafe fn can_push(api: &Api, l: L, y: &Layout) -> bool {
    let top = (l as usize + y.thread_top_offset) as *const usize;
    // SAFETY: `top` lies in the thread's header; the push is popped.
    unsafe {
        let before = std::ptr::read(top);
        (api.pushnil)(l);
        let after = std::ptr::read(top);
        (api.settop)(l, -2);
        after == before + 8 && std::ptr::read(top) == before
    }
}

/// The layout of this LuaJIT, read off a string and a table it makes: their
/// type bytes and the string's length where each ABI puts them (no Lua code
/// of the application's runs in the child).
///
/// # Safety
/// As `walk_vm`.
unsafe fn abi(api: &Api, l: L) -> Option<&'static Layout> {
    const PROBE: &CStr = c"memory_status";
    // SAFETY: as the caller's; each read lies within the objects just made
    // (a string's header and its 13 bytes, a table's header), whichever the
    // ABI: GC64 puts `gct` at 9 and a string's `len` at 20, non-GC64 at 5
    // and 16.
    unsafe {
        let top = (api.gettop)(l);
        (api.pushlstring)(l, PROBE.as_ptr(), PROBE.to_bytes().len());
        let s = (api.topointer)(l, -1) as *const u8;
        (api.createtable)(l, 0, 0);
        let t = (api.topointer)(l, -1) as *const u8;
        let fits = |gct: usize, len: usize| {
            *s.add(gct) == 4
                && std::ptr::read_unaligned(s.add(len).cast::<u32>()) as usize
                    == PROBE.to_bytes().len()
                && *t.add(gct) == 11
        };
        let (gc64, non_gc64) = (fits(9, 20), fits(5, 16));
        (api.settop)(l, top);
        match (gc64, non_gc64) {
            (true, false) => Some(&GC64),
            (false, true) => Some(&NON_GC64),
            _ => None,
        }
    }
}

/// A `u32` field at `offset` of the object at `p`.
///
/// # Safety
/// `p + offset .. + 4` lies in the object's header.
unsafe fn read_u32(p: usize, offset: usize) -> u64 {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned((p + offset) as *const u32) as u64 }
}

/// A table's bytes: its header, its array part (colocated or not) and its
/// hash part (hmask 0 is the shared empty one: lj_tab.c frees a hash part
/// only when hmask > 0).
///
/// # Safety
/// `p` is a table of the snapshot.
unsafe fn table_bytes(y: &Layout, p: usize) -> u64 {
    // SAFETY: fields of the table's header (the caller's contract).
    unsafe {
        let colo = std::ptr::read((p + y.tab_colo_offset) as *const i8);
        let mut bytes = y.tab_header_bytes;
        if colo != 0 {
            bytes += ((colo as u8) & 0x7f) as u64 * 8;
        }
        if colo <= 0 {
            bytes += read_u32(p, y.tab_asize_offset) * 8;
        }
        let hmask = read_u32(p, y.tab_hmask_offset);
        if hmask > 0 {
            bytes += (hmask + 1) * y.node_bytes;
        }
        bytes
    }
}

/// A cdata's bytes: a variable-length one has its length before it
/// (`GCcdataVar`: offset, extra, len); a fixed one is a whole allocator chunk,
/// whose head word precedes it.
///
/// # Safety
/// `p` is a cdata's payload in the snapshot.
unsafe fn cdata_bytes(y: &Layout, p: usize) -> u64 {
    let o = p - y.cdata_header_bytes;
    // SAFETY: the cdata's header, and the words LuaJIT puts before it.
    unsafe {
        if std::ptr::read((o + y.cdata_marked_offset) as *const u8) & 0x80 != 0 {
            let extra = std::ptr::read_unaligned((o - 6) as *const u16) as u64;
            let len = std::ptr::read_unaligned((o - 4) as *const u32) as u64;
            len + extra
        } else {
            let head = std::ptr::read_unaligned((o - 8) as *const usize);
            ((head & !7) as u64).saturating_sub(8)
        }
    }
}

impl Walker<'_> {
    /// # Safety
    /// As `walk_vm`.
    unsafe fn roots(&mut self) {
        let (api, l) = (self.api, self.l);
        // SAFETY: pseudo-indices and the registry's own `_LOADED`.
        unsafe {
            (api.pushvalue)(l, LUA_GLOBALSINDEX);
            self.add(NO_PARENT, Edge::Root("_G"));
            (api.pushvalue)(l, LUA_REGISTRYINDEX);
            (api.pushlstring)(l, c"_LOADED".as_ptr(), 7);
            (api.rawget)(l, -2);
            self.add(NO_PARENT, Edge::Root("package.loaded"));
            (api.settop)(l, self.queue);
            (api.pushvalue)(l, LUA_REGISTRYINDEX);
            self.add(NO_PARENT, Edge::Root("registry"));
        }
    }

    /// Takes the value on top of the stack (popping it): a new object is
    /// counted and queued.
    ///
    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn add(&mut self, parent: u32, edge: Edge) {
        let (api, l) = (self.api, self.l);
        // SAFETY: the value on top of the stack.
        unsafe {
            let Some(kind) = kind_of_type((api.type_)(l, -1)) else {
                (api.settop)(l, -2);
                return;
            };
            let p = (api.topointer)(l, -1) as usize;
            if p == 0 || self.nodes.len() >= MAX_OBJECTS {
                self.truncated |= p != 0;
                (api.settop)(l, -2);
                return;
            }
            if !self.seen.insert(p) {
                (api.settop)(l, -2);
                return;
            }
            let own = self.own_bytes(kind, p);
            self.types[kind].0 += 1;
            self.types[kind].1 += own;
            self.nodes.push(Node {
                parent,
                edge,
                kind: kind as u8,
                own,
                retained: own,
                entries: 0,
                location: None,
            });
            if kind == STRING {
                (api.settop)(l, -2);
            } else {
                (api.rawseti)(l, self.queue, self.nodes.len() as c_int);
            }
        }
    }

    /// The bytes of the object on top of the stack, at `p`.
    ///
    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn own_bytes(&self, kind: usize, p: usize) -> u64 {
        let (api, l, y) = (self.api, self.l, self.layout);
        // SAFETY: `p` is the object's address (its payload's for userdata
        // and cdata), each field read within its header (lj_obj.h); the
        // object is on top of the stack.
        unsafe {
            match kind {
                TABLE => table_bytes(y, p),
                STRING => y.str_header_bytes + ((((api.objlen)(l, -1) as u64) + 4) & !3),
                FUNCTION => self.function_bytes(p),
                USERDATA => y.udata_header_bytes + (api.objlen)(l, -1) as u64,
                THREAD => y.thread_header_bytes + read_u32(p, y.thread_stacksize_offset) * 8,
                _ => cdata_bytes(y, p),
            }
        }
    }

    /// A closure's bytes: its header and its upvalues (a Lua function's by
    /// reference, a C function's by value).
    ///
    /// # Safety
    /// As `walk_vm`; the function at `p` is on top of the stack.
    unsafe fn function_bytes(&self, p: usize) -> u64 {
        let (api, l, y) = (self.api, self.l, self.layout);
        // SAFETY: `lua_getinfo` with `>` pops the copy pushed; `ffid` lies in
        // the function's header.
        unsafe {
            let mut ar: LuaDebug = std::mem::zeroed();
            (api.pushvalue)(l, -1);
            (api.getinfo)(l, c">u".as_ptr(), &mut ar);
            let upvalues = ar.nups.max(0) as u64;
            // ffid 0: a Lua function (FF_LUA).
            if std::ptr::read((p + y.func_ffid_offset) as *const u8) == 0 {
                y.lua_func_header_bytes + y.lua_upvalue_ref_bytes * upvalues
            } else {
                y.c_func_header_bytes + 8 * upvalues
            }
        }
    }

    /// Queues what the object on top of the stack refers to.
    ///
    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn expand(&mut self, i: u32) {
        let (api, l) = (self.api, self.l);
        // SAFETY: the object on top of the stack, of the node's kind.
        unsafe {
            (api.checkstack)(l, 8);
            let o = (api.gettop)(l);
            match self.nodes[i as usize].kind as usize {
                TABLE => self.table(i, o),
                FUNCTION => self.function(i, o),
                USERDATA => {
                    if (api.getmetatable)(l, o) != 0 {
                        self.add(i, Edge::Metatable);
                    }
                    (api.getfenv)(l, o);
                    self.add(i, Edge::Environment);
                }
                THREAD => self.thread(i, o),
                _ => {}
            }
        }
    }

    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn table(&mut self, i: u32, o: c_int) {
        let (api, l) = (self.api, self.l);
        // SAFETY: a table at `o`; `lua_next` leaves key and value on top.
        unsafe {
            let (weak_keys, weak_values) = self.weak_mode(o);
            let mut entries = 0;
            (api.pushnil)(l);
            while (api.next)(l, o) != 0 {
                entries += 1;
                let edge = match (api.type_)(l, -2) {
                    LUA_TSTRING => {
                        let mut len = 0;
                        let s = (api.tolstring)(l, -2, &mut len);
                        Edge::Key(s.cast(), len)
                    }
                    LUA_TNUMBER => Edge::Index((api.tonumber)(l, -2)),
                    LUA_TBOOLEAN => Edge::Bool((api.toboolean)(l, -2) != 0),
                    LUA_TLIGHTUSERDATA => Edge::LightKey((api.topointer)(l, -2) as usize),
                    t => Edge::KeyOfKind(kind_of_type(t).unwrap_or(CDATA)),
                };
                // A weak reference holds nothing: what only it reaches is
                // garbage awaiting the collector.
                if weak_values {
                    (api.settop)(l, -2);
                } else {
                    self.add(i, edge);
                }
                if !weak_keys {
                    (api.pushvalue)(l, -1);
                    self.add(i, Edge::AsKey);
                }
            }
            self.nodes[i as usize].entries = entries;
            if (api.getmetatable)(l, o) != 0 {
                self.add(i, Edge::Metatable);
            }
        }
    }

    /// Whether the table at `o` has weak keys and weak values (`__mode`).
    ///
    /// # Safety
    /// As `walk_vm`; `o` is a table.
    unsafe fn weak_mode(&self, o: c_int) -> (bool, bool) {
        let (api, l) = (self.api, self.l);
        // SAFETY: the metatable pushed and its `__mode` read raw, then both
        // popped; a string's bytes read while it is on the stack.
        unsafe {
            if (api.getmetatable)(l, o) == 0 {
                return (false, false);
            }
            (api.pushlstring)(l, c"__mode".as_ptr(), 6);
            (api.rawget)(l, -2);
            let mut mode: &[u8] = &[];
            if (api.type_)(l, -1) == LUA_TSTRING {
                let mut len = 0;
                let p = (api.tolstring)(l, -1, &mut len);
                mode = std::slice::from_raw_parts(p.cast(), len);
            }
            let weak = (mode.contains(&b'k'), mode.contains(&b'v'));
            (api.settop)(l, -3);
            weak
        }
    }

    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn function(&mut self, i: u32, o: c_int) {
        let (api, l) = (self.api, self.l);
        // SAFETY: a function at `o`.
        unsafe {
            let mut ar: LuaDebug = std::mem::zeroed();
            (api.pushvalue)(l, o);
            (api.getinfo)(l, c">Su".as_ptr(), &mut ar);
            let c = is_c_function(&ar);
            self.nodes[i as usize].location = Some(Location {
                source: ar.source,
                line: ar.linedefined,
                c,
            });
            for n in 1..=ar.nups.max(0) {
                let name = (api.getupvalue)(l, o, n);
                if name.is_null() {
                    break;
                }
                self.add(i, Edge::Upvalue(name, n));
            }
            (api.getfenv)(l, o);
            self.add(i, Edge::Environment);
        }
    }

    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn thread(&mut self, i: u32, o: c_int) {
        let (api, l) = (self.api, self.l);
        // SAFETY: a thread at `o`; values are copied from its stack to ours.
        unsafe {
            let co = (api.tothread)(l, o);
            if co.is_null() || co == l {
                return;
            }
            let mut ar: LuaDebug = std::mem::zeroed();
            let mut level = 0;
            while level < 256 && (api.getstack)(co, level, &mut ar) != 0 {
                (api.getinfo)(co, c"Sf".as_ptr(), &mut ar);
                let at = Location {
                    source: ar.source,
                    line: ar.linedefined,
                    c: is_c_function(&ar),
                };
                (api.xmove)(co, l, 1);
                self.add(i, Edge::Frame(level, at));
                for n in 1..=1024 {
                    (api.checkstack)(co, 2);
                    let name = (api.getlocal)(co, &ar, n);
                    if name.is_null() {
                        break;
                    }
                    (api.xmove)(co, l, 1);
                    self.add(i, Edge::Local(name, at));
                }
                level += 1;
            }
            let top = (api.gettop)(co).min(10_000);
            for k in 1..=top {
                (api.checkstack)(co, 2);
                (api.pushvalue)(co, k);
                (api.xmove)(co, l, 1);
                self.add(i, Edge::Slot(k));
            }
        }
    }

    /// Sums each object into its parent's retained bytes and picks the
    /// largest of each kind, with their paths.
    ///
    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn finish(mut self) -> VmWalk {
        for i in (0..self.nodes.len()).rev() {
            let (parent, retained) = (self.nodes[i].parent, self.nodes[i].retained);
            if parent != NO_PARENT {
                self.nodes[parent as usize].retained += retained;
            }
        }
        let mut objects = Vec::new();
        for kind in 0..WALK_KINDS.len() {
            let mut of_kind: Vec<u32> = (0..self.nodes.len() as u32)
                .filter(|&n| self.nodes[n as usize].kind as usize == kind)
                .collect();
            of_kind.sort_by_key(|&n| std::cmp::Reverse(self.nodes[n as usize].retained));
            for n in of_kind.into_iter().take(SENT_PER_KIND) {
                let node = &self.nodes[n as usize];
                objects.push(WalkedObject {
                    kind,
                    own_bytes: node.own,
                    retained_bytes: node.retained,
                    entries: if kind == TABLE { node.entries } else { 0 },
                    // SAFETY: the names and sources the path shows live in
                    // the snapshot, which nothing frees.
                    path: unsafe { self.path(n) },
                });
            }
        }
        VmWalk {
            walked: self.nodes.len() as u64,
            truncated: self.truncated,
            elapsed_us: self.started.elapsed().as_micros() as u64,
            types: self.types,
            objects,
            finalizers: Vec::new(),
        }
    }

    /// The cdata waiting on each finalizer, from the FFI's finalizer table:
    /// a Lua finalizer by its code (every closure of it), a C function by
    /// the address the parent names.
    ///
    /// # Safety
    /// As `walk_vm`.
    unsafe fn finalizers(&mut self, parent: libc::pid_t, deadline: Instant) -> Vec<FinalizerGroup> {
        let y = self.layout;
        // SAFETY: the snapshot's state; the table and its nodes are LuaJIT's.
        let Some(table) = (unsafe { finalizer_table(y, self.l) }) else {
            return Vec::new();
        };
        // SAFETY: the finalizer table's header and hash part.
        let (hmask, nodes) = unsafe {
            (
                read_u32(table, y.tab_hmask_offset) as usize,
                y.mref(table + y.tab_node_offset),
            )
        };
        let mut groups: Vec<(Finalizer, FinalizerGroup)> = Vec::new();
        for i in 0..=hmask.min(MAX_OBJECTS * 2) {
            // SAFETY: getppid has no precondition.
            if i % 1024 == 0 && (Instant::now() > deadline || unsafe { libc::getppid() } != parent)
            {
                break;
            }
            let node = nodes + i * y.node_bytes as usize;
            // SAFETY: a node of the hash part: its value, then its key.
            let ((key_tag, cdata), (tag, value)) = unsafe { (y.tvalue(node + 8), y.tvalue(node)) };
            if key_tag != TAG_CDATA || hmask == 0 {
                continue;
            }
            // SAFETY: a function or cdata of the snapshot.
            let Some(who) = (unsafe { self.finalizer(tag, value) }) else {
                continue;
            };
            let payload = cdata + y.cdata_header_bytes;
            let who = match groups.iter().any(|g| g.0 == who) {
                false if groups.len() >= MAX_FINALIZERS => Finalizer::Other,
                _ => who,
            };
            let at = match groups.iter().position(|g| g.0 == who) {
                Some(at) => at,
                None => {
                    groups.push((who, FinalizerGroup::default()));
                    groups.len() - 1
                }
            };
            let g = &mut groups[at].1;
            g.count += 1;
            g.reached += u64::from(self.seen.contains(payload));
            // SAFETY: a cdata of the snapshot, not yet freed (its finalizer
            // has not run).
            g.bytes += unsafe { cdata_bytes(y, payload) };
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.1.bytes));
        for (who, g) in &mut groups {
            g.name = match *who {
                Finalizer::Lua(source, line) => {
                    let at = Location {
                        source,
                        line,
                        c: false,
                    };
                    // SAFETY: the chunk name lives in the snapshot.
                    unsafe { describe(at) }
                }
                Finalizer::CFunction => "a C function".into(),
                Finalizer::CPointer(p) => format!("{C_FUNCTION_MARK}{p:x}"),
                Finalizer::Kind(kind) => kind.into(),
                Finalizer::Other => format!("other finalizers (past the first {MAX_FINALIZERS})"),
            };
        }
        groups.into_iter().map(|g| g.1).collect()
    }

    /// A finalizer value: a function (put on the stack to ask its code), or
    /// a cdata holding a C function's address.
    ///
    /// # Safety
    /// `value` is a GC object of type `tag` in the snapshot.
    unsafe fn finalizer(&self, tag: u32, value: usize) -> Option<Finalizer> {
        let (api, l, y) = (self.api, self.l, self.layout);
        match tag {
            TAG_CDATA => {
                let mut address = [0u8; 8];
                read_own(value + y.cdata_header_bytes, &mut address)
                    .then(|| Finalizer::CPointer(usize::from_ne_bytes(address)))
            }
            TAG_FUNCTION if self.pushes => {
                // SAFETY: a TValue written at `L->top`, which `can_push`
                // found, after room is made; `lua_getinfo` with `>` pops it.
                unsafe {
                    (api.checkstack)(l, 2);
                    let top = (l as usize + y.thread_top_offset) as *mut usize;
                    std::ptr::write(*top as *mut u64, y.tvalue_of(tag, value));
                    *top += 8;
                    let mut ar: LuaDebug = std::mem::zeroed();
                    (api.getinfo)(l, c">S".as_ptr(), &mut ar);
                    Some(match is_c_function(&ar) {
                        true => Finalizer::CFunction,
                        false => Finalizer::Lua(ar.source, ar.linedefined),
                    })
                }
            }
            TAG_FUNCTION => Some(Finalizer::Kind("a function")),
            // Removed by `ffi.gc(cdata, nil)`.
            TAG_NIL => None,
            // Any value LuaJIT can call: a table or userdata with `__call`.
            TAG_TABLE => Some(Finalizer::Kind("a table")),
            TAG_USERDATA => Some(Finalizer::Kind("a userdata")),
            _ => Some(Finalizer::Kind("another value")),
        }
    }

    /// The path from a root to node `n`, escaped by the one rule.
    ///
    /// # Safety
    /// As `walk_vm`: the snapshot's state, which nothing else runs; the
    /// object being expanded on top of the stack where the method reads it.
    unsafe fn path(&self, mut n: u32) -> String {
        let mut chain = Vec::new();
        while n != NO_PARENT && chain.len() < 64 {
            chain.push(n);
            n = self.nodes[n as usize].parent;
        }
        let mut out = String::new();
        if n != NO_PARENT {
            out.push_str("...");
        }
        let mut described = false;
        for &n in chain.iter().rev() {
            let node = &self.nodes[n as usize];
            // A key after "... of function at f.lua:3" reads apart from it.
            let is_key = matches!(
                node.edge,
                Edge::Key(..)
                    | Edge::Index(_)
                    | Edge::Bool(_)
                    | Edge::KeyOfKind(_)
                    | Edge::LightKey(_)
            );
            if described && is_key {
                out.push_str(" > ");
            }
            described = matches!(
                node.edge,
                Edge::Upvalue(..) | Edge::Local(..) | Edge::Frame(..)
            );
            let parent = (node.parent != NO_PARENT).then(|| &self.nodes[node.parent as usize]);
            // SAFETY: the caller's contract.
            unsafe { push_edge(&mut out, node.edge, parent.and_then(|p| p.location)) };
            if out.len() > 1024 {
                let mut cut = 1024;
                while !out.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.truncate(cut);
                out.push_str("...");
                break;
            }
        }
        out
    }
}

/// One step of a path.
///
/// # Safety
/// The edge's pointers are alive (the snapshot's strings).
unsafe fn push_edge(out: &mut String, edge: Edge, function: Option<Location>) {
    let text = |p: *const c_char| -> String {
        // SAFETY: a NUL-terminated name of LuaJIT's (the caller's contract).
        unsafe { escape(CStr::from_ptr(p).to_bytes()) }
    };
    match edge {
        Edge::Root(name) => out.push_str(name),
        // SAFETY: a string key's bytes (the caller's contract).
        Edge::Key(p, len) => push_string_key(out, unsafe { std::slice::from_raw_parts(p, len) }),
        Edge::Index(n) if n.fract() == 0.0 && n.abs() < 1e15 => {
            out.push_str(&format!("[{}]", n as i64))
        }
        Edge::Index(n) => out.push_str(&format!("[{n}]")),
        Edge::Bool(b) => out.push_str(&format!("[{b}]")),
        Edge::KeyOfKind(kind) => out.push_str(&format!("[a {} key]", WALK_KINDS[kind])),
        // Named by the parent (`name_light_keys`): dladdr takes the loader's
        // lock, which a thread of the parent may have held at the fork.
        Edge::LightKey(p) => out.push_str(&format!("[{LIGHT_KEY_MARK}{p:x}]")),
        Edge::AsKey => out.push_str(" > a key"),
        Edge::Metatable => out.push_str(" > metatable"),
        Edge::Environment => out.push_str(" > environment"),
        Edge::Upvalue(name, n) => {
            // A C function's upvalues have no names: their numbers.
            match text(name) {
                name if name.is_empty() => out.push_str(&format!(" > upvalue {n}")),
                name => out.push_str(&format!(" > upvalue \"{name}\"")),
            }
            if let Some(at) = function {
                // SAFETY: as above.
                out.push_str(&format!(" of {}", unsafe { describe(at) }));
            }
        }
        Edge::Slot(k) => out.push_str(&format!(" > stack slot {k}")),
        Edge::Local(name, at) => {
            // SAFETY: as above.
            let function = unsafe { describe(at) };
            out.push_str(&format!(" > local \"{}\" of {function}", text(name)))
        }
        Edge::Frame(level, at) => {
            // SAFETY: as above.
            let function = unsafe { describe(at) };
            out.push_str(&format!(" > frame {level}: {function}"))
        }
    }
}

/// `function at app/cache.lua:42`, or `a C function`.
///
/// # Safety
/// `at.source` is null or a live NUL-terminated chunk name.
unsafe fn describe(at: Location) -> String {
    if at.c || at.source.is_null() {
        return "a C function".into();
    }
    // SAFETY: the caller's contract.
    let source = unsafe { CStr::from_ptr(at.source).to_bytes() };
    let chunk = match source.first() {
        Some(b'@' | b'=') => escape(&source[1..]),
        _ => {
            let first_line = source.split(|&b| b == b'\n').next().unwrap_or_default();
            let cut = &first_line[..first_line.len().min(40)];
            format!(
                "[string \"{}{}\"]",
                escape(cut),
                if cut.len() < source.len() { "..." } else { "" }
            )
        }
    };
    format!("function at {chunk}:{}", at.line)
}

/// Whether `lua_getinfo` said `what` is "C".
fn is_c_function(ar: &LuaDebug) -> bool {
    // SAFETY: `what` is null or LuaJIT's static NUL-terminated string.
    !ar.what.is_null() && unsafe { CStr::from_ptr(ar.what) }.to_bytes() == b"C"
}

/// How the child writes a light userdata key's address in a path (never
/// shown: `name_light_keys` replaces it). No key makes it: string keys are
/// quoted or plain identifiers.
const LIGHT_KEY_MARK: &str = "@light:";
/// How the child writes a C function finalizer's address (`name_finalizer`
/// replaces it).
const C_FUNCTION_MARK: &str = "@cfunction:";

/// A finalizer named: a C function by its symbol.
fn name_finalizer(name: &str) -> String {
    match name
        .strip_prefix(C_FUNCTION_MARK)
        .map(|hex| usize::from_str_radix(hex, 16))
    {
        Some(Ok(p)) => symbol_of(p, "a C function"),
        Some(Err(_)) => "a C function".into(),
        None => name.to_string(),
    }
}

/// A path with its light userdata keys named by the symbols they point at.
fn name_light_keys(path: &str) -> String {
    replace_light_keys(path, LIGHT_KEY_MARK, |p| {
        symbol_of(p, "a light userdata key")
    })
}

/// A light userdata key named by the symbol it points at (lua-nginx-module
/// keys its registry tables by the addresses of its statics).
fn symbol_of(p: usize, unnamed: &str) -> String {
    // SAFETY: dladdr only looks the address up; a zeroed Dl_info is valid.
    let info = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        (libc::dladdr(p as *const c_void, &mut info) != 0).then_some(info)
    };
    match info {
        Some(info) if !info.dli_sname.is_null() && info.dli_saddr as usize == p => {
            // SAFETY: the loader's NUL-terminated symbol name.
            escape(unsafe { CStr::from_ptr(info.dli_sname) }.to_bytes())
        }
        _ => unnamed.into(),
    }
}

/// Each VM's previous walk in this worker, kept for the next one's growth.
static PREVIOUS: std::sync::Mutex<[Option<(VmWalk, Instant, usize)>; 2]> =
    std::sync::Mutex::new([None, None]);

/// Finishes a walk (off the loop) and compares it with this worker's
/// previous one, which it then replaces.
pub fn outcome(walk: Walk) -> Result<WalkOutcome, WalkError> {
    // Ages run from fork to fork: both walks saw the heap as it was then.
    let (forked_at, vms) = (walk.started, walk.vms);
    let (mut walks, fork) = walk.finish()?;
    for o in walks
        .iter_mut()
        .flatten()
        .flat_map(|w| w.objects.iter_mut())
    {
        if o.path.contains(LIGHT_KEY_MARK) {
            o.path = name_light_keys(&o.path);
        }
    }
    for f in walks
        .iter_mut()
        .flatten()
        .flat_map(|w| w.finalizers.iter_mut())
    {
        f.name = name_finalizer(&f.name);
    }
    for w in walks.iter_mut().flatten() {
        merge_finalizers(&mut w.finalizers);
    }
    let mut kept = PREVIOUS.lock().unwrap_or_else(|p| p.into_inner());
    let previous = [0, 1].map(|vm| {
        let (w, at, _) = kept[vm].as_ref().filter(|k| Some(k.2) == vms[vm])?;
        let age = forked_at.saturating_duration_since(*at);
        Some((w.clone(), age.as_millis() as u64))
    });
    // A walk cut short is no baseline: where its bound fell varies.
    for ((slot, walk), l) in kept.iter_mut().zip(&walks).zip(vms) {
        if let (Some(w), Some(l)) = (walk.as_ref().filter(|w| !w.truncated), l) {
            *slot = Some((w.clone(), forked_at, l));
        }
    }
    Ok(WalkOutcome {
        walks,
        previous,
        fork,
    })
}

/// A walk given up (its measuring failed): the child is killed and reaped,
/// never left a zombie nobody waits for.
impl Drop for Walk {
    fn drop(&mut self) {
        self.reap(true);
    }
}
