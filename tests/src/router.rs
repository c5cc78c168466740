//! A routed test network: several client namespaces behind a router namespace, which
//! forwards (and optionally masquerades) to a server namespace.
//!
//! ```text
//!  client 0  10.232.X0.1 --- 10.232.X0.254 \
//!  client 1  10.232.X1.1 --- 10.232.X1.254  router  10.232.S.1 --- 10.232.S.2  server
//!  ...                                      /  (outside)
//! ```
//!
//! Clients route everything through the router; the server needs no route when the router
//! masquerades (the server only ever sees the router's outside address, on its own link).
//! Like [`crate::TestNet`], the addresses exist only inside the test's namespaces.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::netns::{veth_pair, Netns, Veth};

static SUBNET_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `X` of `10.232.X.0/24` for a new link (distinct per link of this process, up to 250).
fn next_subnet() -> u8 {
    let n = SUBNET_COUNTER.fetch_add(1, Ordering::Relaxed) + std::process::id();
    (n % 250) as u8 + 1
}

fn v6(x: u8, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x232, x.into(), 0, 0, 0, 0, host)
}

/// Clients behind a router in front of a server. Field order matters for drop: the links go
/// first, the namespaces last (deleting a namespace destroys its veth ends).
#[derive(Debug)]
pub struct RoutedNet {
    /// `client_links[i]`: side `a` is client `i`, side `b` the router.
    pub client_links: Vec<Veth>,
    /// Side `a` is the router (its outside address), side `b` the server.
    pub server_link: Veth,
    pub clients: Vec<Netns>,
    pub router: Netns,
    pub server: Netns,
}

impl RoutedNet {
    /// Creates `n_clients` client namespaces, a router and a server, links and routes them,
    /// turns on forwarding in the router and, when `masquerade`, source NAT of everything
    /// leaving towards the server (`iptables -t nat -A POSTROUTING -o <link> -j MASQUERADE`).
    pub fn new(tag: &str, n_clients: usize, masquerade: bool) -> Result<RoutedNet> {
        let router = Netns::new(&format!("{tag}r"))?;
        let server = Netns::new(&format!("{tag}s"))?;
        let mut clients = Vec::new();
        for i in 0..n_clients {
            clients.push(Netns::new(&format!("{tag}c{i}"))?);
        }
        let x = next_subnet();
        let server_link = veth_pair(
            &router,
            &server,
            Ipv4Addr::new(10, 232, x, 1),
            Ipv4Addr::new(10, 232, x, 2),
            v6(x, 1),
            v6(x, 2),
        )
        .context("router-server link")?;
        let mut client_links = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let x = next_subnet();
            let link = veth_pair(
                c,
                &router,
                Ipv4Addr::new(10, 232, x, 1),
                Ipv4Addr::new(10, 232, x, 254),
                v6(x, 1),
                v6(x, 0xfe),
            )
            .with_context(|| format!("client {i}-router link"))?;
            c.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &link.v4_b.to_string(),
            ])
            .with_context(|| format!("default route of client {i}"))?;
            c.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &link.v6_b.to_string(),
            ])
            .with_context(|| format!("IPv6 default route of client {i}"))?;
            client_links.push(link);
        }
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        if masquerade {
            router
                .exec(&[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    &server_link.if_a,
                    "-j",
                    "MASQUERADE",
                ])
                .context("masquerade rule in the router")?;
        } else {
            // Without NAT the server must know the way back to the clients.
            for link in &client_links {
                let subnet = Ipv4Addr::from(u32::from(link.v4_a) & 0xffff_ff00);
                server.exec(&[
                    "ip",
                    "route",
                    "add",
                    &format!("{subnet}/24"),
                    "via",
                    &server_link.v4_a.to_string(),
                ])?;
            }
        }
        Ok(RoutedNet {
            client_links,
            server_link,
            clients,
            router,
            server,
        })
    }

    /// Client `i`'s address.
    pub fn client_v4(&self, i: usize) -> Ipv4Addr {
        self.client_links[i].v4_a
    }

    /// The router's address on the server's link: what the server sees as the source of
    /// every masqueraded client.
    pub fn router_outside_v4(&self) -> Ipv4Addr {
        self.server_link.v4_a
    }

    pub fn server_v4(&self) -> Ipv4Addr {
        self.server_link.v4_b
    }

    /// Every namespace: clients, router, server.
    pub fn all(&self) -> Vec<&Netns> {
        let mut v: Vec<&Netns> = self.clients.iter().collect();
        v.push(&self.router);
        v.push(&self.server);
        v
    }
}
