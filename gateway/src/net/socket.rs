//! Listening sockets bound with SO_REUSEPORT, one per gateway thread, so the kernel
//! load-balances accepts across threads without an acceptor thread.
//!
//! Guarantees: every socket of a group listens on the same address; when the
//! configured port is 0 the first socket picks it and the others reuse it.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::FromRawFd;

const LISTEN_BACKLOG: i32 = 4096;

fn cvt(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// One non-blocking listener on `addr` with SO_REUSEADDR and SO_REUSEPORT.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscalls on a descriptor we own; every result is checked, and the
    // descriptor is wrapped (and so closed) before any early return after creation.
    unsafe {
        let fd = cvt(libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let listener = TcpListener::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for option in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            cvt(libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            ))?;
        }
        let mut storage: libc::sockaddr_storage = mem::zeroed();
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin =
                    &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_scope_id = v6.scope_id();
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        cvt(libc::bind(
            fd,
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        ))?;
        cvt(libc::listen(fd, LISTEN_BACKLOG))?;
        Ok(listener)
    }
}

/// `count` listeners on one address (the first one's port if `addr` has port 0).
///
/// Errors: `AddrInUse` when another socket (another router, say) already listens on a
/// fixed port. SO_REUSEPORT alone would let a second process of the same user join
/// the group and silently take a share of the connections, so the port is first bound
/// once without SO_REUSEPORT (which fails while any listener holds it) and released.
/// How long a start waits for a fixed port held by a process that has just died: an
/// io_uring instance is torn down after its process exits, and the listening socket its
/// multishot accept holds is released only then, so a restart right after a crash
/// (SIGKILL) can find the port still held for a moment.
const PORT_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds `addr` once without SO_REUSEPORT and releases it: `AddrInUse` (with a reason
/// naming the address) if a listener still holds it after `PORT_RELEASE_WAIT`.
fn probe_port_free(addr: SocketAddr) -> io::Result<()> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    loop {
        match TcpListener::bind(addr) {
            Ok(probe) => {
                drop(probe);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "{addr} is already in use (another router or program listens there)"
                        ),
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

pub fn bind_group(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    assert!(count >= 1);
    if addr.port() != 0 {
        probe_port_free(addr)?;
    }
    let first = bind_reuseport(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(bind_reuseport(bound)?);
    }
    debug_assert!(listeners
        .iter()
        .all(|l| l.local_addr().map(|a| a == bound).unwrap_or(false)));
    Ok(listeners)
}
