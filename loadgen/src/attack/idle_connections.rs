//! Idle-connection flood (issue 27 case 13, R-PROV-3, SPEC section 9): TCP
//! connections that never log in, opened before the honest users connect and held
//! through the window, as many as the router's `network.connections_max` allows, so
//! that honest clients (users, the canary provider) must still get in.
//!
//! Bounds: at most `connections_bound` connections (the router's limit, and half of
//! the descriptors this process may open after a reserve: the router runs in this
//! process, so each connection costs two), opened at most `RATE` a second (an
//! accept storm is not the point), all closed at the window's end.

use super::{connections_bound, Attack, AttackContext, AttackError, Take, Window};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const RATE: f64 = 20_000.0;

#[derive(Default)]
pub struct IdleConnections {
    held: Vec<TcpStream>,
    took: Take,
}

impl IdleConnections {
    pub fn new() -> IdleConnections {
        IdleConnections::default()
    }
}

impl Attack for IdleConnections {
    fn prepare(&mut self, ctx: &AttackContext) -> Result<(), AttackError> {
        let count = connections_bound(ctx.connections_max, ctx.honest_connections);
        self.took.add("idle_connections_bound", count as u64);
        let started = Instant::now();
        let mut failures = 0u64;
        for i in 0..count {
            if ctx.stop.load(Ordering::Relaxed) {
                break;
            }
            let due = started + Duration::from_secs_f64(i as f64 / RATE);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            match TcpStream::connect_timeout(&ctx.addr, Duration::from_millis(500)) {
                Ok(stream) => self.held.push(stream),
                Err(_) => {
                    failures += 1;
                    // The router (or this process) is out of room: more would only
                    // spin; what is held is the attack.
                    if failures >= 16 {
                        break;
                    }
                }
            }
        }
        self.took
            .add("idle_connections_held", self.held.len() as u64);
        self.took.add("idle_connects_failed", failures);
        ctx.primed.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn run(&mut self, ctx: &AttackContext, window: Window) -> Result<Take, AttackError> {
        window.wait_start(&ctx.stop);
        while window.open(&ctx.stop) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Closed at the window's end: the run's drain and batch wait go on without them.
        let open = self.held.len();
        self.held.clear();
        let mut take = std::mem::take(&mut self.took);
        take.add("idle_connections_closed", open as u64);
        Ok(take)
    }
}
