//! The floor under Switchyard: a bare Pingora 0.9 pass-through with the same runtime settings
//! (one thread, no work stealing, mimalloc) and no release logic at all. perf/run measures it beside
//! Switchyard, nginx and HAProxy (peer `pingora`), so that what Pingora costs and what Switchyard
//! adds to it can be told apart.
//!
//! Run: `cargo run --release --example bare_pingora -- LISTEN UPSTREAM`
//! (defaults 127.0.0.1:18083 and 127.0.0.1:19001; loopback addresses only.)

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18083".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:19001".into());
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        pid_file: "/tmp/switchyard-perf/bare-pingora.pid".into(),
        upgrade_sock: "/tmp/switchyard-perf/bare-pingora.sock".into(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
