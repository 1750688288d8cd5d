//! Enlistment's storage (`byoi serve --enlist`): machines whose MAC no
//! server has, that netbooted into the agent in discover mode. Each has
//! at most one live discovery token (its hash), good for one hello within
//! the boot timeout; the hello's inventory is kept until the operator
//! adopts the machine (it becomes a server) or forgets it.
//!
//! Unknown machines are anyone on the provisioning network: the table
//! holds at most `--enlist-max-machines` rows (machines that never said hello
//! within the boot timeout make room for new ones), each inventory at most
//! [`MAX_DISCOVERED_INVENTORY`] bytes, and a reported machine's inventory
//! is never overwritten by another boot (forget it to discover it again).

use std::net::IpAddr;

use super::sql::{self, params, Conn, Optional};
use byoi_wire::agent::Inventory;

use super::{from_json, insert_server, json_err, new_secret, token_hash, Db, Result, ServerRow};

/// Most machines kept at once, by default (`--enlist-max-machines`).
pub const MAX_DISCOVERED: u32 = 4096;

/// Largest inventory kept for a discovered machine, as JSON (bytes): room
/// for a few hundred disks and NICs.
pub const MAX_DISCOVERED_INVENTORY: usize = 32 << 10;

/// A discovered machine.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredRow {
    /// The MAC it netbooted with, lowercase with colons.
    pub mac: String,
    /// What its agent reported; `None` while it boots.
    pub inventory: Option<Inventory>,
    /// The version its agent said hello with.
    pub agent_version: Option<String>,
    /// Where its last boot script request or hello came from.
    pub address: String,
    /// Unix time of its first boot script request.
    pub first_seen: i64,
    /// Unix time of its last boot script request or hello.
    pub last_seen: i64,
}

/// What an unknown MAC's boot script request leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverBoot {
    /// Boot the agent in discover mode with this token.
    Token(String),
    /// It has reported: it waits to be adopted.
    Reported,
    /// The table is full of machines that said hello or still may.
    Full,
}

/// How an adoption went.
#[derive(Debug, Clone, PartialEq)]
pub enum Adopted {
    /// The server now exists, with the machine's inventory and these MACs.
    Done {
        /// Its MACs.
        macs: Vec<String>,
    },
    /// No such discovered machine.
    NoMachine,
    /// It has not reported its inventory yet.
    NotReported,
    /// The name or a MAC is taken (nothing changed).
    Conflict(String),
}

const COLS: &str = "mac, inventory, agent_version, address, first_seen, last_seen";

fn row(r: &sql::Row) -> sql::Result<DiscoveredRow> {
    Ok(DiscoveredRow {
        mac: r.get(0)?,
        inventory: r.get::<_, Option<String>>(1)?.map(|s| from_json(1, &s)).transpose()?,
        agent_version: r.get(2)?,
        address: r.get(3)?,
        first_seen: r.get(4)?,
        last_seen: r.get(5)?,
    })
}

impl Db {
    /// An unknown MAC (normalised) asks for its boot script from `addr`: a
    /// fresh discovery token (the previous one retired) while it has not
    /// reported, if fewer than `max` machines are kept.
    pub async fn discover_boot(&self, mac: &str, addr: IpAddr, max: u32) -> Result<DiscoverBoot> {
        let (mac, addr, boot_timeout) = (mac.to_owned(), addr.to_string(), self.boot_timeout);
        self.change(move |tx| {
            let t = tx.now()?;
            let reported: Option<bool> = tx
                .query_row("SELECT inventory IS NOT NULL FROM discovered WHERE mac = ?1", [&mac], |r| r.get(0))
                .optional()?;
            if reported == Some(true) {
                tx.execute("UPDATE discovered SET last_seen = ?2, address = ?3 WHERE mac = ?1", params![mac, t, addr])?;
                return Ok(DiscoverBoot::Reported);
            }
            if reported.is_none() {
                let count = |tx: &Conn<'_>| tx.query_row("SELECT count(*) FROM discovered", (), |r| r.get::<_, i64>(0));
                if count(tx)? >= i64::from(max) {
                    // Those whose token expired unused make room.
                    tx.execute("DELETE FROM discovered WHERE inventory IS NULL AND token_expires <= ?1", [t])?;
                    if count(tx)? >= i64::from(max) {
                        return Ok(DiscoverBoot::Full);
                    }
                }
            }
            let token = new_secret();
            tx.execute(
                "INSERT INTO discovered (mac, token, token_expires, address, first_seen, last_seen) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (mac) DO UPDATE SET \
                 token = excluded.token, token_expires = excluded.token_expires, address = excluded.address, \
                 last_seen = excluded.last_seen",
                params![mac, token_hash(&token), t + boot_timeout, addr, t],
            )?;
            Ok(DiscoverBoot::Token(token))
        })
        .await
    }

    /// A discovery token's hello: keeps the inventory and retires the
    /// token; the machine's MAC, or `None` for no such live token.
    pub async fn discovered_hello(
        &self,
        hash: String,
        addr: IpAddr,
        inventory: &Inventory,
        version: &str,
    ) -> Result<Option<String>> {
        let (inventory, version) = (serde_json::to_string(inventory).map_err(json_err)?, version.to_owned());
        self.change(move |c| {
            let t = c.now()?;
            c.query_row(
                "UPDATE discovered SET inventory = ?2, agent_version = ?3, address = ?4, last_seen = ?5, \
                 token = NULL, token_expires = NULL WHERE token = ?1 AND token_expires > ?5 RETURNING mac",
                params![hash, inventory, version, addr.to_string(), t],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// The discovered machines, by MAC.
    pub async fn discovered(&self) -> Result<Vec<DiscoveredRow>> {
        self.read(|c| c.query_map(&format!("SELECT {COLS} FROM discovered ORDER BY mac"), (), row)).await
    }

    /// A discovered machine by MAC (normalised).
    pub async fn discovered_machine(&self, mac: &str) -> Result<Option<DiscoveredRow>> {
        let mac = mac.to_owned();
        self.read(move |c| c.query_row(&format!("SELECT {COLS} FROM discovered WHERE mac = ?1"), [mac], row).optional())
            .await
    }

    /// Forgets a discovered machine (its token too); whether it existed.
    pub async fn forget_discovered(&self, mac: &str) -> Result<bool> {
        let mac = mac.to_owned();
        self.change(move |c| Ok(c.execute("DELETE FROM discovered WHERE mac = ?1", [mac])? > 0)).await
    }

    /// Makes the reported machine `mac` the server `server` describes (its
    /// name, power, kernel arguments): with the machine's MAC, the MACs of
    /// the NICs it reported, its inventory and agent version; the machine
    /// (and any other discovered with one of those MACs) is forgotten, in
    /// the same transaction.
    pub async fn adopt(&self, mac: &str, server: ServerRow) -> Result<Adopted> {
        let mac = mac.to_owned();
        self.change(move |tx| {
            let found =
                tx.query_row(&format!("SELECT {COLS} FROM discovered WHERE mac = ?1"), [&mac], row).optional()?;
            let Some(machine) = found else { return Ok(Adopted::NoMachine) };
            let Some(inventory) = machine.inventory else { return Ok(Adopted::NotReported) };
            let mut macs: Vec<String> =
                inventory.nics.iter().filter_map(|n| crate::model::normalize_mac(&n.mac)).collect();
            macs.push(machine.mac);
            macs.sort();
            macs.dedup();
            let server = ServerRow {
                macs,
                inventory: Some(inventory),
                agent_version: machine.agent_version,
                last_seen: Some(machine.last_seen),
                ..server
            };
            if let Err(conflict) = insert_server(tx, &server)? {
                return Ok(Adopted::Conflict(conflict));
            }
            Ok(Adopted::Done { macs: server.macs })
        })
        .await
    }
}
