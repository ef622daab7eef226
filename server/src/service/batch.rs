//! The batched directory and KeyPackage methods (ADR 0110): ResolveUsers and
//! FetchKeyPackages answer N users or devices in one round trip, each entry exactly as the
//! single call would have, and charge every limit N times, so a batch never takes more than
//! N single calls could.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use qpq_proto::{v1, Status};

use super::{key32, normalize_username, Fail, Service};
use crate::storage::{Key32, Session, StorageError};

/// Most usernames one ResolveUsers, or devices one FetchKeyPackages, may name.
pub const BATCH_MAX: usize = 1000;

/// Checks a batch's size: BadRequest when empty, PayloadTooLarge past [`BATCH_MAX`].
fn check_batch_len(n: usize, what: &str) -> Result<(), Fail> {
    if n == 0 {
        return Err(Fail::bad(format!("no {what} in the request")));
    }
    if n > BATCH_MAX {
        return Err(Fail::new(
            Status::PayloadTooLarge,
            format!("at most {BATCH_MAX} {what} per call"),
        ));
    }
    Ok(())
}

impl Service {
    /// Charges the caller's account request budget `n` tokens in all (the dispatch took one
    /// already): a batch of `n` costs what `n` single calls would. The dispatch's token is
    /// given back and `n` taken at once, so a batch larger than the burst passes from a full
    /// bucket and leaves it in debt ([`crate::limits::RateLimiter::take`]), which later calls
    /// pay back: the sustained rate is the same as for single calls.
    fn charge_batch(&self, s: &Session, n: usize) -> Result<(), Fail> {
        if n > 1 {
            self.account_limiter.refund(&s.account_id);
            if let Err(wait) = self.account_limiter.take(&s.account_id, n as f64) {
                // The refused request still costs its one token, as a refused single call.
                let _ = self.account_limiter.check(&s.account_id);
                return Err(self.rate_limited(wait));
            }
        }
        Ok(())
    }

    /// ResolveUsers (502).
    pub(super) async fn resolve_users(
        &self,
        s: &Session,
        r: v1::ResolveUsersRequest,
    ) -> Result<v1::ResolveUsersResponse, Fail> {
        check_batch_len(r.usernames.len(), "usernames")?;
        self.charge_batch(s, r.usernames.len())?;
        let names: Vec<(String, Option<String>)> = r
            .usernames
            .into_iter()
            .map(|u| {
                let n = normalize_username(&u).ok();
                (n.clone().unwrap_or(u), n)
            })
            .collect();
        let users = self
            .db(move |st| {
                let mut out = Vec::with_capacity(names.len());
                for (shown, normalized) in names {
                    let Some(u) = normalized else {
                        out.push(v1::ResolvedUser {
                            username: shown,
                            status: u32::from(Status::BadRequest.code()),
                            ..Default::default()
                        });
                        continue;
                    };
                    let Some(a) = st.account_by_username(&u)? else {
                        out.push(v1::ResolvedUser {
                            username: u,
                            status: u32::from(Status::NotFound.code()),
                            ..Default::default()
                        });
                        continue;
                    };
                    let devices = st.devices(a.id)?;
                    out.push(v1::ResolvedUser {
                        username: u,
                        status: 0,
                        identity_key: Bytes::copy_from_slice(&a.identity_key),
                        device_keys: devices
                            .iter()
                            .map(|d| Bytes::copy_from_slice(&d.device_key))
                            .collect(),
                    });
                }
                Ok::<_, StorageError>(out)
            })
            .await?;
        Ok(v1::ResolveUsersResponse { users })
    }

    /// FetchKeyPackages (305): per device the same buckets as FetchKeyPackage, and every pop
    /// of the request in one storage transaction.
    pub(super) async fn fetch_key_packages(
        &self,
        s: &Session,
        r: v1::FetchKeyPackagesRequest,
    ) -> Result<v1::FetchKeyPackagesResponse, Fail> {
        check_batch_len(r.device_keys.len(), "device keys")?;
        let mut dks = Vec::with_capacity(r.device_keys.len());
        let mut seen = BTreeSet::new();
        for d in &r.device_keys {
            let dk = key32(d, "device_key")?;
            if !seen.insert(dk) {
                return Err(Fail::bad("a device key is named twice"));
            }
            dks.push(dk);
        }
        self.charge_batch(s, dks.len())?;
        let suite = r.ciphersuite;
        let hybrid: Option<HashMap<Key32, Vec<u8>>> = if r.with_hybrid_keys {
            let wanted = dks.clone();
            Some(
                self.db(move |st| st.hybrid_keys(&wanted))
                    .await?
                    .into_iter()
                    .collect(),
            )
        } else {
            None
        };
        let limited = self.config.key_package_fetch_burst > 0;
        let mut entries: Vec<v1::KeyPackageEntry> = Vec::with_capacity(dks.len());
        let mut targets: Vec<(Key32, bool)> = Vec::with_capacity(dks.len());
        let mut slots: Vec<usize> = Vec::with_capacity(dks.len());
        for dk in &dks {
            let mut e = v1::KeyPackageEntry {
                device_key: Bytes::copy_from_slice(dk),
                ..Default::default()
            };
            if let Some(h) = &hybrid {
                match h.get(dk) {
                    Some(k) => e.hybrid_public_key = Bytes::copy_from_slice(k),
                    None => {
                        e.status = u32::from(Status::NotFound.code());
                        entries.push(e);
                        continue;
                    }
                }
            }
            // The same two buckets, in the same order, as FetchKeyPackage charges (K-2, item
            // 13): once per device of the batch.
            if limited {
                if let Err(wait) = self.key_package_fetches.check(&(s.account_id, *dk)) {
                    let f = self.rate_limited(wait);
                    e.status = u32::from(Status::RateLimited.code());
                    e.retry_after_ms = f.retry_after_ms;
                    e.hybrid_public_key = Bytes::new();
                    entries.push(e);
                    continue;
                }
            }
            let stock_open = !limited || self.key_package_target.check(dk).is_ok();
            slots.push(entries.len());
            targets.push((*dk, stock_open));
            entries.push(e);
        }
        if !targets.is_empty() {
            let taken = self
                .db(move |st| st.take_key_packages(&targets, suite))
                .await?;
            for (slot, kp) in slots.into_iter().zip(taken) {
                let e = &mut entries[slot];
                match kp {
                    Some(kp) => {
                        e.key_package = Bytes::from(kp.data);
                        e.last_resort = kp.last_resort;
                    }
                    None => {
                        e.status = u32::from(Status::NotFound.code());
                        e.hybrid_public_key = Bytes::new();
                    }
                }
            }
        }
        Ok(v1::FetchKeyPackagesResponse { entries })
    }
}
