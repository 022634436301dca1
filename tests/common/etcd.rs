//! A real one-member etcd (Debian's `etcd-server`) on loopback ports, for the fleet's tests.

use super::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A one-member etcd cluster in a temporary directory.
pub struct Etcd {
    pub dir: PathBuf,
    pub client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
    /// Serving its clients over TLS with the tests' `localhost` certificate.
    pub tls: bool,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_as(false)
    }

    pub fn start_as(tls: bool) -> Etcd {
        let client = free_addr();
        let peer = free_addr();
        let dir = std::env::temp_dir().join(format!(
            "switchyard-etcd-{}-{}",
            std::process::id(),
            client.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = Etcd {
            dir,
            client,
            peer,
            child: None,
            tls,
        };
        etcd.resume();
        etcd
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.client.port())
        } else {
            format!("http://{}", self.client)
        }
    }

    /// Starts etcd (again) on its data directory and waits until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let listen = if self.tls {
            format!("https://{}", self.client)
        } else {
            self.url()
        };
        let (_, cert, key) = test_pki();
        let tls_args: Vec<String> = if self.tls {
            vec![
                format!("--cert-file={}", cert.display()),
                format!("--key-file={}", key.display()),
            ]
        } else {
            Vec::new()
        };
        let child = Command::new("etcd")
            .args(&tls_args)
            .args([
                "--name",
                "default",
                "--data-dir",
                &self.dir.join("data").display().to_string(),
                "--listen-client-urls",
                &listen,
                "--advertise-client-urls",
                &self.url(),
                "--listen-peer-urls",
                &format!("http://{}", self.peer),
                "--initial-advertise-peer-urls",
                &format!("http://{}", self.peer),
                "--initial-cluster",
                &format!("default=http://{}", self.peer),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server) must be installed: .ci/run installs it");
        self.child = Some(child);
        let health = format!("{}/health", self.url());
        assert!(
            eventually(Duration::from_secs(20), || client()
                .get(&health)
                .call()
                .is_ok_and(|r| r
                    .into_string()
                    .unwrap_or_default()
                    .contains("true"))),
            "etcd did not become healthy"
        );
    }

    /// Kills etcd (SIGKILL: nothing is said to its clients).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.url());
        if self.tls {
            cmd.arg(format!("--cacert={}", test_pki().0.display()));
        }
        let out = cmd.args(args).output().expect("etcdctl");
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
