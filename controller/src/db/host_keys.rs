//! Each server's SSH host key for rescue mode: made on first use (an
//! Ed25519 key from the system's random source, by `ring`), then the same
//! at every rescue boot, so that `ssh` can check it; dropped with the
//! server. The seed is a secret as the database's other secrets are.

use super::sql::{params, Conn, Optional, SqlError};
use byoi_wire::ssh::SshHostKey;
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::{now, Db, Result};

/// Why no key could be made.
#[derive(Debug, thiserror::Error)]
#[error("making an SSH host key: the system's random source failed")]
struct KeyGenFailed;

/// A fresh Ed25519 key.
fn generate() -> Result<SshHostKey, KeyGenFailed> {
    let rng = ring::rand::SystemRandom::new();
    let seed: [u8; 32] = ring::rand::generate(&rng).map_err(|_| KeyGenFailed)?.expose();
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyGenFailed)?;
    let public = pair.public_key().as_ref().try_into().map_err(|_| KeyGenFailed)?;
    Ok(SshHostKey { seed, public })
}

impl Db {
    /// The server's SSH host key, made and stored on first use; `None` when
    /// there is no such server.
    pub async fn ssh_host_key(&self, server: &str) -> Result<Option<SshHostKey>> {
        let server = server.to_owned();
        self.write(move |c| {
            let stored = |c: &Conn<'_>| {
                c.query_row("SELECT seed, public FROM ssh_host_keys WHERE server = ?1", [&server], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()
            };
            let found = match stored(c)? {
                Some(k) => Some(k),
                None => {
                    let fresh = generate().map_err(|e| SqlError::Encode(e.to_string()))?;
                    c.execute(
                        "INSERT INTO ssh_host_keys (server, seed, public, created_at)
                         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM servers WHERE name = ?1)
                         ON CONFLICT (server) DO NOTHING",
                        params![server, fresh.seed.as_slice(), fresh.public.as_slice(), now()],
                    )?;
                    // Read back: a concurrent first use may have won.
                    stored(c)?
                }
            };
            let Some((seed, public)) = found else { return Ok(None) };
            let bad = |what: &str| SqlError::Column(0, format!("the stored SSH host key's {what} is not 32 bytes"));
            Ok(Some(SshHostKey {
                seed: seed.try_into().map_err(|_| bad("seed"))?,
                public: public.try_into().map_err(|_| bad("public key"))?,
            }))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ring::signature::{UnparsedPublicKey, ED25519};

    use super::*;

    #[test]
    fn generated_keys_sign_as_their_public_key_says() {
        let k = generate().unwrap();
        let pair = Ed25519KeyPair::from_seed_and_public_key(&k.seed, &k.public).unwrap();
        let sig = pair.sign(b"byoi");
        UnparsedPublicKey::new(&ED25519, k.public).verify(b"byoi", sig.as_ref()).unwrap();
        assert_ne!(generate().unwrap(), k, "two keys alike");
    }

    #[tokio::test]
    async fn a_server_keeps_its_key_and_an_unknown_one_gets_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite"), std::time::Duration::from_secs(60)).await.unwrap();
        let row = |name: &str| super::super::ServerRow {
            name: name.into(),
            macs: vec![],
            power: crate::power::Power::Manual,
            kernel_args: vec![],
            boot_target: byoi_wire::BootTarget::Local,
            inventory: None,
            last_seen: None,
            created_at: 0,
            agent_version: None,
            agent_address: None,
        };
        db.add_server(row("a")).await.unwrap().unwrap();
        db.add_server(row("b")).await.unwrap().unwrap();
        let a = db.ssh_host_key("a").await.unwrap().unwrap();
        assert_eq!(db.ssh_host_key("a").await.unwrap().unwrap(), a, "made once");
        assert_ne!(db.ssh_host_key("b").await.unwrap().unwrap(), a, "one per server");
        assert_eq!(db.ssh_host_key("nobody").await.unwrap(), None);
    }
}
