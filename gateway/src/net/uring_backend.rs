//! The io_uring backend (placeholder until the ring loop lands): setup always fails,
//! so the server falls back to mio with a log line.

use crate::config::NetworkConfig;
use crate::net::driver::{Shared, ThreadSettings};
use crate::net::handler::FrameHandler;
use crate::net::outbox::Lane;
use std::io;

pub(crate) struct UringLoop;

impl UringLoop {
    pub(crate) fn setup(
        _network: &NetworkConfig,
        _settings: ThreadSettings,
        _shared: &Shared,
        _lane: &Lane,
        _listener: &std::net::TcpListener,
    ) -> io::Result<UringLoop> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring backend not built yet",
        ))
    }

    pub(crate) fn run<H: FrameHandler>(
        self,
        _handler: H,
        _listener: std::net::TcpListener,
    ) -> io::Result<()> {
        Ok(())
    }
}
