//! Real OpenSSH `sshd` instances for tests: each its own host key,
//! authorized keys, loopback address and node root (`$CZ_NODE_ROOT`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cz_adapters::{Host, ProvisionerKey};

use crate::free_port;

const SSHD: &str = "/usr/sbin/sshd";

pub fn user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        let out = Command::new("id").arg("-un").output().expect("id -un");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// A port free on every one of `ips` (loopback addresses of one test's
/// nodes, which then all listen on it).
pub fn free_port_on(ips: &[String]) -> u16 {
    loop {
        let p = free_port();
        if ips.iter().all(|ip| std::net::TcpListener::bind((ip.as_str(), p)).is_ok()) {
            return p;
        }
    }
}

/// One `sshd` with its own host key, authorized keys, listen address and
/// session environment (`SetEnv`: `CZ_NODE_ROOT` is always its `root/`).
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub ip: String,
    pub port: u16,
    child: Option<Child>,
    pub host_key: ProvisionerKey,
    env: Vec<(String, String)>,
}

impl Sshd {
    pub fn start(authorized: &[&ProvisionerKey]) -> Sshd {
        Sshd::start_at("127.0.0.1", free_port(), authorized, &[])
    }

    pub fn start_at(
        ip: &str,
        port: u16,
        authorized: &[&ProvisionerKey],
        env: &[(&str, &str)],
    ) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (bash .ci/run does)"
        );
        // sshd's privilege-separation directory (present when the package is
        // installed as a service; created here for container machines).
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<&str> = authorized.iter().map(|k| k.public.as_str()).collect();
        std::fs::write(dir.path().join("authorized_keys"), keys.join("\n") + "\n").unwrap();
        let mut s = Sshd {
            dir,
            ip: ip.to_owned(),
            port,
            child: None,
            host_key: ProvisionerKey::generate("host").unwrap(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let d = self.dir.path();
        let hk = d.join("host_ed25519");
        std::fs::write(&hk, self.host_key.private.expose()).unwrap();
        std::fs::set_permissions(&hk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut set_env = format!("CZ_NODE_ROOT={}/root", d.display());
        for (k, v) in &self.env {
            set_env.push_str(&format!(" \"{k}={v}\""));
        }
        let cfg = format!(
            "Port {port}\nListenAddress {ip}\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n\
             SetEnv {set_env}\n",
            ip = self.ip,
            port = self.port,
            hk = hk.display(),
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((self.ip.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Drops every open SSH connection the hard way (SIGKILL to the
    /// per-connection sshd processes), leaving the commands they started
    /// running: what a node sees when the daemon is killed mid-command.
    pub fn drop_sessions(&self) -> usize {
        let Some(listener) = self.child.as_ref().map(Child::id) else { return 0 };
        let ppid_comm = |pid: u32| -> Option<(u32, String)> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            Some((rest.split_whitespace().nth(1)?.parse().ok()?, comm))
        };
        let mut killed = 0;
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            // An sshd process under the listener (any depth).
            let mut cur = pid;
            let mut under = false;
            let mut is_sshd = false;
            for depth in 0..8 {
                let Some((ppid, comm)) = ppid_comm(cur) else { break };
                if depth == 0 {
                    is_sshd = comm.starts_with("sshd");
                }
                if ppid == listener {
                    under = true;
                    break;
                }
                cur = ppid;
            }
            if under && is_sshd && pid != listener {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                killed += 1;
            }
        }
        killed
    }

    /// A reinstalled server: same address, new host key.
    pub fn reinstall(&mut self) {
        self.stop();
        self.host_key = ProvisionerKey::generate("host-2").unwrap();
        self.spawn();
    }

    pub fn host(&self) -> Host {
        Host {
            name: format!("node-{}", self.port),
            address: self.ip.clone(),
            port: self.port,
            user: user(),
        }
    }

    /// Where this node's absolute path `abs` is (its `$CZ_NODE_ROOT`).
    pub fn path(&self, abs: &str) -> PathBuf {
        self.dir.path().join("root").join(abs.trim_start_matches('/'))
    }

    /// The fingerprint OpenSSH shows for this host key.
    pub fn fingerprint(&self) -> String {
        let k = ssh_key::PublicKey::from_openssh(&self.host_key.public).unwrap();
        k.fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
