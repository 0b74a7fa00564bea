//! Two rtnetlink requests, written by hand: bring `lo` up and give it the metadata address.
//! Inside a fresh network namespace `lo` is interface 1 and the only one.

use std::net::Ipv4Addr;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto, socket,
};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 0x1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const AF_INET: u8 = 2;
const LOOPBACK_INDEX: u32 = 1;

fn header(len: usize, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

fn link_up() -> Vec<u8> {
    let mut m = header(32, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, 1);
    m.extend_from_slice(&[0, 0]); // family AF_UNSPEC, padding
    m.extend_from_slice(&0u16.to_ne_bytes()); // device type
    m.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    m
}

fn add_address(addr: Ipv4Addr) -> Vec<u8> {
    let mut m = header(40, RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 2);
    m.extend_from_slice(&[AF_INET, 32, 0, 0]); // family, prefix length, flags, scope universe
    m.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&addr.octets());
    }
    m
}

fn request(msg: &[u8]) -> Result<(), String> {
    let fd = socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkRoute)
        .map_err(|e| format!("netlink socket: {e}"))?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &NetlinkAddr::new(0, 0)).map_err(|e| format!("netlink bind: {e}"))?;
    sendto(std::os::fd::AsRawFd::as_raw_fd(&fd), msg, &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map_err(|e| format!("netlink send: {e}"))?;
    let mut buf = [0u8; 1024];
    let n = recv(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("netlink recv: {e}"))?;
    if n < 20 {
        return Err("netlink: short answer".into());
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != NLMSG_ERROR {
        return Err(format!("netlink: unexpected answer type {kind}"));
    }
    let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if code == 0 { Ok(()) } else { Err(format!("netlink: {}", nix::errno::Errno::from_raw(-code))) }
}

/// Brings the loopback interface up and adds `extra` (the metadata address) to it.
pub fn setup_loopback(extra: Ipv4Addr) -> Result<(), String> {
    request(&link_up())?;
    request(&add_address(extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_their_declared_lengths() {
        assert_eq!(link_up().len(), 32);
        let a = add_address(Ipv4Addr::new(169, 254, 169, 254));
        assert_eq!(a.len(), 40);
        assert_eq!(&a[32..36], &[8, 0, 1, 0]);
        assert_eq!(&a[36..40], &[169, 254, 169, 254]);
    }
}
