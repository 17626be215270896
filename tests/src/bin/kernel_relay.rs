//! A measuring instrument for the benchmark, not a proxy: a TCP relay
//! (like HAProxy's `mode tcp`) whose server-to-client direction never
//! reaches user space. The backend's socket is put in a BPF sockmap with a
//! verdict program that redirects every buffer it receives to the client's
//! socket, inside the kernel; the client-to-server direction is copied by
//! a thread. It answers "what would the streaming ratio be if the proxy
//! process took no part in moving the result bytes?".
//!
//! Needs CAP_BPF and CAP_NET_ADMIN (root). Usage:
//! `kernel_relay LISTEN_PORT BACKEND_ADDR`; prints `ready` once listening.
//! The greeting is passed on in user space before the backend's socket
//! joins the map (data already queued on a socket is not redirected).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_VERDICT: u32 = 38;
const BPF_FUNC_SK_REDIRECT_MAP: i32 = 52;
/// `offsetof(struct __sk_buff, local_port)` (host byte order).
const SKB_LOCAL_PORT: i16 = 136;
/// One slot per local port.
const SLOTS: u32 = 65536;

/// `union bpf_attr`, as bytes (144 in the kernel's headers of 2026).
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Self([0; 144])
    }
    fn u32(mut self, at: usize, v: u32) -> Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, at: usize, v: u64) -> Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: the bpf(2) syscall reads (and may write) `size` bytes of attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockmap() -> Result<OwnedFd> {
    let mut attr = Attr::new()
        .u32(0, BPF_MAP_TYPE_SOCKMAP)
        .u32(4, 4)
        .u32(8, 4)
        .u32(12, SLOTS);
    let fd = bpf(BPF_MAP_CREATE, &mut attr).context("creating a sockmap")?;
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// One BPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = dst | (src << 4);
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

/// The two maps and the verdict program: a buffer received on a socket in
/// `from` (at its local port) goes out of the socket in `to` at the same
/// index.
struct Redirect {
    from: OwnedFd,
    to: OwnedFd,
    _prog: OwnedFd,
}

impl Redirect {
    fn new() -> Result<Self> {
        let (from, to) = (sockmap()?, sockmap()?);
        let program: Vec<u8> = [
            // r2 = the map `to` (a 64-bit immediate: two instructions)
            insn(0x18, 2, 1, 0, to.as_raw_fd()),
            insn(0, 0, 0, 0, 0),
            // r3 = skb->local_port
            insn(0x61, 3, 1, SKB_LOCAL_PORT, 0),
            // r4 = 0 (to the socket's egress)
            insn(0xb7, 4, 0, 0, 0),
            // r0 = bpf_sk_redirect_map(skb, to, local_port, 0)
            insn(0x85, 0, 0, 0, BPF_FUNC_SK_REDIRECT_MAP),
            insn(0x95, 0, 0, 0, 0),
        ]
        .concat();
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = Attr::new()
            .u32(0, BPF_PROG_TYPE_SK_SKB)
            .u32(4, (program.len() / 8) as u32)
            .u64(8, program.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64);
        let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: a new descriptor, ours alone.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                bail!(
                    "loading the verdict program: {e}: {}",
                    String::from_utf8_lossy(&log[..end])
                );
            }
        };
        let mut attr = Attr::new()
            .u32(0, from.as_raw_fd() as u32)
            .u32(4, prog.as_raw_fd() as u32)
            .u32(8, BPF_SK_SKB_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut attr).context("attaching the verdict program")?;
        Ok(Self {
            from,
            to,
            _prog: prog,
        })
    }

    fn set(map: &OwnedFd, slot: u32, fd: RawFd) -> Result<()> {
        let value = fd as u32;
        let mut attr = Attr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u64(8, &slot as *const u32 as u64)
            .u64(16, &value as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("adding a socket to a sockmap")?;
        Ok(())
    }

    fn clear(map: &OwnedFd, slot: u32) {
        let mut attr = Attr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u64(8, &slot as *const u32 as u64);
        let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
    }
}

/// Reads one MySQL packet (header and payload).
fn read_packet(s: &mut TcpStream) -> Result<Vec<u8>> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut packet = vec![0u8; 4 + len];
    packet[..4].copy_from_slice(&header);
    s.read_exact(&mut packet[4..])?;
    Ok(packet)
}

fn serve(mut client: TcpStream, backend: SocketAddr, redirect: &Redirect) -> Result<()> {
    let mut server = TcpStream::connect(backend)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let greeting = read_packet(&mut server)?;
    client.write_all(&greeting)?;
    let slot = u32::from(server.local_addr()?.port());
    Redirect::set(&redirect.to, slot, client.as_raw_fd())?;
    Redirect::set(&redirect.from, slot, server.as_raw_fd())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.read(&mut buf) {
            // A socket in a sockmap may end a blocking read early with
            // EAGAIN when woken for another reason (its write space, as
            // the redirect writes to it): read again.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = server.shutdown(Shutdown::Write);
    Redirect::clear(&redirect.from, slot);
    Redirect::clear(&redirect.to, slot);
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().context("LISTEN_PORT")?.parse()?;
    let backend: SocketAddr = args.next().context("BACKEND_ADDR")?.parse()?;
    // SAFETY: prctl with a signal number; ends this relay with its parent.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let redirect = Arc::new(Redirect::new()?);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    println!("ready");
    std::io::stdout().flush()?;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let redirect = Arc::clone(&redirect);
        std::thread::spawn(move || {
            if let Err(e) = serve(client, backend, &redirect) {
                eprintln!("kernel_relay: {e:#}");
            }
        });
    }
    Ok(())
}
