//! A c10d process group: a TCPStore for the rendezvous and a Gloo (or NCCL) backend for the
//! collectives, owned through the shim's C ABI. Errors come back as text from C++ and become
//! [`DistError`]s naming this rank and, when a peer has gone, which one (see [`Group::lost`]).

use super::{DistError, Launch};
use std::time::Duration;
use tch::Tensor;

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Gloo,
    Nccl,
}

impl Backend {
    /// `--dist-backend`: gloo, nccl, or auto (NCCL for CUDA tensors when this build has it,
    /// as PyTorch's default is; Gloo otherwise, which also reduces CUDA tensors, through the host).
    pub fn choose(s: &str, cuda: bool) -> Result<Backend, DistError> {
        match s {
            "gloo" => Ok(Backend::Gloo),
            "nccl" => Ok(Backend::Nccl),
            "auto" if cuda && cfg!(finetune_nccl) => Ok(Backend::Nccl),
            "auto" => Ok(Backend::Gloo),
            other => Err(DistError::UnknownBackend(other.to_string())),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

pub struct Group {
    raw: ffi::Handle,
    pub rank: usize,
    pub world: usize,
    pub backend: Backend,
    host: String,
}

// SAFETY: the c10d objects behind the handle are thread-safe for the calls made here (PyTorch
// calls them from any thread); the handle is only freed in Drop.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

const ERR_LEN: usize = 2048;

impl Group {
    /// Joins the group `launch` describes. Every collective, and the join itself, gives up after
    /// `timeout`, so a rank that never arrives (or dies) ends the others with an error.
    pub fn join(launch: &Launch, backend: Backend, timeout: Duration) -> Result<Group, DistError> {
        if !super::AVAILABLE {
            return Err(DistError::NotBuilt);
        }
        let addr = format!("{}:{}", launch.master_addr, launch.master_port);
        // A restarted group (torchrun --max-restarts) meets in the same agent store: its keys
        // must not be the previous attempt's.
        let prefix = format!("finetune/{}/", launch.restart);
        let raw = ffi::new(
            &launch.master_addr,
            launch.master_port,
            launch.rank,
            launch.world,
            launch.rank == 0 && !launch.agent_store,
            backend,
            timeout,
            &prefix,
        )
        .map_err(|msg| DistError::Join {
            rank: launch.rank,
            world: launch.world,
            addr,
            msg,
        })?;
        let g = Group {
            raw,
            rank: launch.rank,
            world: launch.world,
            backend,
            host: hostname(),
        };
        // Who is where, for naming a lost rank later.
        let me = format!("{} {}", g.host, std::process::id());
        g.store_set(&format!("who/{}", g.rank), me.as_bytes())
            .map_err(|e| g.failed("registering with the store", e))?;
        Ok(g)
    }

    /// Sums (or max/min) each tensor in place across the ranks.
    pub fn all_reduce(&self, ts: &[Tensor], op: ReduceOp) -> Result<(), DistError> {
        ffi::all_reduce(&self.raw, ts, op).map_err(|e| self.failed("all-reduce", e))
    }

    /// Every rank's tensors become `root`'s.
    pub fn broadcast(&self, ts: &[Tensor], root: usize) -> Result<(), DistError> {
        ffi::broadcast(&self.raw, ts, root).map_err(|e| self.failed("broadcast", e))
    }

    pub fn barrier(&self) -> Result<(), DistError> {
        ffi::barrier(&self.raw).map_err(|e| self.failed("barrier", e))
    }

    fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        ffi::store_set(&self.raw, key, value)
    }

    fn failed(&self, what: &'static str, msg: String) -> DistError {
        DistError::Collective {
            rank: self.rank,
            world: self.world,
            what,
            msg,
            lost: self.lost(),
        }
    }

    /// Which ranks are gone, as far as this rank can tell: a rank on this host whose process no
    /// longer exists is named; the store being unreachable means its host (rank 0, or torchrun's
    /// agent) is gone.
    fn lost(&self) -> String {
        let mut gone = Vec::new();
        let mut remote = Vec::new();
        for r in (0..self.world).filter(|&r| r != self.rank) {
            match ffi::store_get(&self.raw, &format!("who/{r}")) {
                Err(_) => {
                    return "the store at rank 0 (or torchrun's agent) cannot be reached: rank 0 \
                            has probably died"
                        .into()
                }
                Ok(None) => remote.push(format!("rank {r} (never registered)")),
                Ok(Some(v)) => {
                    let who = String::from_utf8_lossy(&v).to_string();
                    let mut it = who.split(' ');
                    let (host, pid) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                    if host == self.host {
                        if !alive(pid) {
                            gone.push(format!("rank {r} (pid {pid}) has died"));
                        }
                    } else {
                        remote.push(format!("rank {r} on {host}"));
                    }
                }
            }
        }
        match (gone.is_empty(), remote.is_empty()) {
            (false, _) => format!("lost {}", gone.join(", ")),
            (true, false) => format!(
                "no rank on this host died; check {} (one of them has probably died or hung)",
                remote.join(", ")
            ),
            (true, true) => "every other rank on this host is alive (one may have hung)".into(),
        }
    }
}

/// Whether process `pid` of this host still runs (a zombie, dead but not yet reaped by its
/// parent, does not).
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Drop for Group {
    fn drop(&mut self) {
        ffi::free(&mut self.raw);
    }
}

#[cfg(finetune_dist)]
mod ffi {
    //! The shim's C ABI (csrc/dist_shim.cpp); every call returns its C++ exception as text.
    use super::{Backend, ReduceOp, ERR_LEN};
    use std::ffi::{c_char, c_int, c_void, CString};
    use std::time::Duration;
    use tch::Tensor;

    pub struct Handle(*mut c_void);

    extern "C" {
        fn ft_dist_new(
            host: *const c_char,
            port: c_int,
            rank: c_int,
            world: c_int,
            is_server: c_int,
            backend: c_int,
            timeout_ms: i64,
            prefix: *const c_char,
            err: *mut c_char,
            errlen: usize,
        ) -> *mut c_void;
        fn ft_dist_allreduce(
            g: *mut c_void,
            ts: *const *mut torch_sys::C_tensor,
            n: c_int,
            op: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        fn ft_dist_broadcast(
            g: *mut c_void,
            ts: *const *mut torch_sys::C_tensor,
            n: c_int,
            root: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        fn ft_dist_barrier(g: *mut c_void, err: *mut c_char, errlen: usize) -> c_int;
        fn ft_dist_store_set(
            g: *mut c_void,
            key: *const c_char,
            val: *const u8,
            n: usize,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        fn ft_dist_store_get(
            g: *mut c_void,
            key: *const c_char,
            buf: *mut u8,
            cap: usize,
            len: *mut usize,
            present: *mut c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
        fn ft_dist_free(g: *mut c_void);
    }

    fn cstr(s: &str) -> CString {
        CString::new(s.replace('\0', "")).unwrap_or_default()
    }

    fn call(f: impl FnOnce(*mut c_char) -> c_int) -> Result<(), String> {
        let mut err = vec![0 as c_char; ERR_LEN];
        if f(err.as_mut_ptr()) == 0 {
            return Ok(());
        }
        Err(message(&err))
    }

    fn message(err: &[c_char]) -> String {
        let bytes: Vec<u8> = err
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        // c10d's messages carry a C++ backtrace after the first lines; the first says what failed.
        String::from_utf8_lossy(&bytes)
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn ptrs(ts: &[Tensor]) -> Vec<*mut torch_sys::C_tensor> {
        ts.iter().map(|t| t.as_ptr() as *mut _).collect()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        host: &str,
        port: u16,
        rank: usize,
        world: usize,
        is_server: bool,
        backend: Backend,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Handle, String> {
        let (h, p) = (cstr(host), cstr(prefix));
        let mut err = vec![0 as c_char; ERR_LEN];
        // SAFETY: the strings outlive the call; err has ERR_LEN bytes.
        let raw = unsafe {
            ft_dist_new(
                h.as_ptr(),
                port as c_int,
                rank as c_int,
                world as c_int,
                is_server as c_int,
                matches!(backend, Backend::Nccl) as c_int,
                timeout.as_millis().min(i64::MAX as u128) as i64,
                p.as_ptr(),
                err.as_mut_ptr(),
                ERR_LEN,
            )
        };
        if raw.is_null() {
            return Err(message(&err));
        }
        Ok(Handle(raw))
    }

    pub fn all_reduce(g: &Handle, ts: &[Tensor], op: ReduceOp) -> Result<(), String> {
        let p = ptrs(ts);
        let op = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        // SAFETY: the tensors outlive the call; c10d writes into their storage in place.
        call(|e| unsafe { ft_dist_allreduce(g.0, p.as_ptr(), p.len() as c_int, op, e, ERR_LEN) })
    }

    pub fn broadcast(g: &Handle, ts: &[Tensor], root: usize) -> Result<(), String> {
        let p = ptrs(ts);
        // SAFETY: as in all_reduce.
        call(|e| unsafe {
            ft_dist_broadcast(g.0, p.as_ptr(), p.len() as c_int, root as c_int, e, ERR_LEN)
        })
    }

    pub fn barrier(g: &Handle) -> Result<(), String> {
        // SAFETY: a live handle.
        call(|e| unsafe { ft_dist_barrier(g.0, e, ERR_LEN) })
    }

    pub fn store_set(g: &Handle, key: &str, val: &[u8]) -> Result<(), String> {
        let k = cstr(key);
        // SAFETY: key and value outlive the call.
        call(|e| unsafe { ft_dist_store_set(g.0, k.as_ptr(), val.as_ptr(), val.len(), e, ERR_LEN) })
    }

    /// The value of `key` if the store has it (never waits for it).
    pub fn store_get(g: &Handle, key: &str) -> Result<Option<Vec<u8>>, String> {
        let k = cstr(key);
        let mut buf = vec![0u8; 256];
        let (mut len, mut present) = (0usize, 0 as c_int);
        // SAFETY: buf has its stated capacity; len and present are written before return.
        call(|e| unsafe {
            ft_dist_store_get(
                g.0,
                k.as_ptr(),
                buf.as_mut_ptr(),
                buf.len(),
                &mut len,
                &mut present,
                e,
                ERR_LEN,
            )
        })?;
        if present == 0 {
            return Ok(None);
        }
        buf.truncate(len.min(256));
        Ok(Some(buf))
    }

    pub fn free(g: &mut Handle) {
        if !g.0.is_null() {
            // SAFETY: created by ft_dist_new, freed once.
            unsafe { ft_dist_free(g.0) };
            g.0 = std::ptr::null_mut();
        }
    }
}

#[cfg(not(finetune_dist))]
mod ffi {
    //! Built without the shim: joining says how to get it; nothing else can be reached.
    use super::{Backend, ReduceOp};
    use std::time::Duration;
    use tch::Tensor;

    pub struct Handle;

    const NOT_BUILT: &str = "built without distributed training";

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        _: &str,
        _: u16,
        _: usize,
        _: usize,
        _: bool,
        _: Backend,
        _: Duration,
        _: &str,
    ) -> Result<Handle, String> {
        Err(super::super::DistError::NotBuilt.to_string())
    }
    pub fn all_reduce(_: &Handle, _: &[Tensor], _: ReduceOp) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    pub fn broadcast(_: &Handle, _: &[Tensor], _: usize) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    pub fn barrier(_: &Handle) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    pub fn store_set(_: &Handle, _: &str, _: &[u8]) -> Result<(), String> {
        Err(NOT_BUILT.into())
    }
    pub fn store_get(_: &Handle, _: &str) -> Result<Option<Vec<u8>>, String> {
        Err(NOT_BUILT.into())
    }
    pub fn free(_: &mut Handle) {}
}
