//! Where this process stands in a distributed run, read from the variables every launcher sets
//! the same way (torchrun's `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`).

use super::DistError;

#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub rank: usize,
    pub local_rank: usize,
    pub world: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the store at MASTER_ADDR:MASTER_PORT
    /// (`TORCHELASTIC_USE_AGENT_STORE`); otherwise rank 0 serves it, as PyTorch's
    /// `_create_c10d_store` does.
    pub agent_store: bool,
    /// How many times torchrun restarted the group (`TORCHELASTIC_RESTART_COUNT`, `--max-restarts`).
    pub restart: u32,
}

impl Launch {
    /// `None` when no launcher placed this process in a group of two or more (no `WORLD_SIZE`,
    /// or 1): a single-process run, which never touches c10d.
    pub fn from_env() -> Result<Option<Launch>, DistError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, DistError> {
        let Some(world) = get("WORLD_SIZE") else {
            return Ok(None);
        };
        let world: usize = parse("WORLD_SIZE", &world, "process count")?;
        if world <= 1 {
            return Ok(None);
        }
        let need = |k: &'static str| get(k).ok_or(DistError::MissingEnv(k));
        let rank: usize = parse("RANK", &need("RANK")?, "rank")?;
        if rank >= world {
            return Err(DistError::BadEnv {
                var: "RANK",
                value: rank.to_string(),
                what: "rank below WORLD_SIZE",
            });
        }
        let local_rank = match get("LOCAL_RANK") {
            Some(v) => parse("LOCAL_RANK", &v, "local rank")?,
            None => rank,
        };
        Ok(Some(Launch {
            rank,
            local_rank,
            world,
            master_addr: need("MASTER_ADDR")?,
            master_port: parse("MASTER_PORT", &need("MASTER_PORT")?, "port")?,
            agent_store: get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
            restart: match get("TORCHELASTIC_RESTART_COUNT") {
                Some(v) => parse("TORCHELASTIC_RESTART_COUNT", &v, "restart count")?,
                None => 0,
            },
        }))
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }
}

fn parse<T: std::str::FromStr>(
    var: &'static str,
    value: &str,
    what: &'static str,
) -> Result<T, DistError> {
    value.trim().parse().map_err(|_| DistError::BadEnv {
        var,
        value: value.to_string(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, DistError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchruns_variables_place_the_process() {
        let l = launch(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.local_rank, l.world, l.restart), (3, 1, 4, 2));
        assert!(l.agent_store && !l.is_leader());
    }

    #[test]
    fn one_process_is_not_distributed_and_bad_values_are_named() {
        assert!(launch(&[]).unwrap().is_none());
        assert!(launch(&[("WORLD_SIZE", "1"), ("RANK", "0")])
            .unwrap()
            .is_none());
        let e = launch(&[("WORLD_SIZE", "2"), ("RANK", "0")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR"), "{e}");
        let e = launch(&[("WORLD_SIZE", "two")]).unwrap_err();
        assert!(e.to_string().contains("WORLD_SIZE=\"two\""), "{e}");
        let e = launch(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
            ("MASTER_ADDR", "a"),
            ("MASTER_PORT", "1"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("RANK"), "{e}");
    }
}
