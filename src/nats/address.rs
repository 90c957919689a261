//! `nats://HOST:PORT/PREFIX` URLs and the names of a job's streams, subjects and buckets
//! (the table "Names" of `spec/cluster.md`).

use std::fmt;
use std::str::FromStr;

/// A parsed `nats://HOST:PORT[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// `HOST:PORT`, as given.
    pub server: String,
    /// The stream prefix, when the URL has one.
    pub prefix: Option<String>,
}

impl NatsUrl {
    /// The prefix, or an error saying the URL needs one (`what` names the flag).
    pub fn require_prefix(&self, what: &str) -> anyhow::Result<&str> {
        self.prefix.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "{what} nats://{} has no stream prefix: write nats://{}/PREFIX",
                self.server,
                self.server
            )
        })
    }
}

/// Whether `s` is a name Bettong accepts for a prefix or a job: letters, digits, `-`, `_`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FromStr for NatsUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("nats://")
            .ok_or_else(|| format!("{s:?} is not a NATS URL: expected nats://HOST:PORT/PREFIX"))?;
        let (server, prefix) = match rest.split_once('/') {
            Some((server, "")) => (server, None),
            Some((server, prefix)) => (server, Some(prefix)),
            None => (rest, None),
        };
        if server.is_empty() || !server.contains(':') {
            return Err(format!(
                "{s:?}: the server must be HOST:PORT (nats-server's default port is 4222)"
            ));
        }
        if let Some(p) = prefix {
            if !valid_name(p) {
                return Err(format!(
                    "{s:?}: the prefix {p:?} may hold only letters, digits, '-' and '_'"
                ));
            }
        }
        Ok(NatsUrl {
            server: server.to_string(),
            prefix: prefix.map(str::to_string),
        })
    }
}

impl fmt::Display for NatsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nats://{}", self.server)?;
        if let Some(p) = &self.prefix {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// The names one prefix's streams and subjects take.
#[derive(Debug, Clone)]
pub struct StreamNames {
    /// The URL's prefix.
    pub prefix: String,
}

impl StreamNames {
    /// The input stream, `PREFIX_in`.
    pub fn in_stream(&self) -> String {
        format!("{}_in", self.prefix)
    }
    /// Input partition `i`'s subject, `PREFIX.in.<i>`.
    pub fn in_subject(&self, i: u32) -> String {
        format!("{}.in.{i}", self.prefix)
    }
    /// The output stream, `PREFIX_out`.
    pub fn out_stream(&self) -> String {
        format!("{}_out", self.prefix)
    }
    /// Key partition `q`'s output subject, `PREFIX.out.<q>`.
    pub fn out_subject(&self, q: u32) -> String {
        format!("{}.out.{q}", self.prefix)
    }
}

/// The names of a job's own streams and buckets, all under `bettong_<job>_*`.
#[derive(Debug, Clone)]
pub struct JobNames {
    /// The job's name.
    pub job: String,
}

impl JobNames {
    /// The repartition stream.
    pub fn rp_stream(&self) -> String {
        format!("bettong_{}_rp", self.job)
    }
    /// Key partition `q`'s repartition subject.
    pub fn rp_subject(&self, q: u32) -> String {
        format!("bettong_{}_rp.{q}", self.job)
    }
    /// The KV bucket of the job's settings, members and partition owners.
    pub fn kv_bucket(&self) -> String {
        format!("bettong_{}_own", self.job)
    }
    /// The Object Store bucket of checkpoints.
    pub fn obj_bucket(&self) -> String {
        format!("bettong_{}_ckpt", self.job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_and_prefix() {
        let u: NatsUrl = "nats://127.0.0.1:4222/wc".parse().unwrap();
        assert_eq!(u.server, "127.0.0.1:4222");
        assert_eq!(u.prefix.as_deref(), Some("wc"));
        assert_eq!(u.to_string(), "nats://127.0.0.1:4222/wc");
        let u: NatsUrl = "nats://h:1".parse().unwrap();
        assert_eq!(u.prefix, None);
        assert!(u.require_prefix("--in").is_err());
    }

    #[test]
    fn rejects_bad_urls() {
        assert!("127.0.0.1:4222/wc".parse::<NatsUrl>().is_err());
        assert!("nats://host/wc".parse::<NatsUrl>().is_err());
        assert!("nats://h:1/a.b".parse::<NatsUrl>().is_err());
        assert!("nats://h:1/a*".parse::<NatsUrl>().is_err());
    }
}
