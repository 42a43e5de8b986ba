//! Buckets (§16), assets (§17) and quotas (§18).

use crate::json::{base64_decoded, canonical_size};
use crate::state::{Accepted, Actor, Bucket, BucketContent, Change, Refusal};
use crate::Oracle;
use roomlab_protocol::{AssetInfo, Backend, BucketName, Contract, ErrorCode, ObjectKey, Plan, Role, UserId};
use serde_json::Value;
use std::collections::BTreeMap;

/// The prefix of user-scoped buckets (bucket.user-scope).
const USER_SCOPE_PREFIX: &str = "user:";

impl Oracle {
    /// bucket.bind.contract: creates the bucket with the caller's contract, or checks an existing
    /// one's contract (`incompatible`, carrying the bucket's); an equal one changes nothing.
    pub(crate) fn bucket_bind(
        &mut self,
        actor: &Actor,
        name: BucketName,
        contract: Contract,
    ) -> Result<Accepted, Refusal> {
        if let Some(existing) = self.buckets.get(&name) {
            if existing.contract != contract {
                return Err(self.incompatible(&name, "is bound with another contract"));
            }
        }
        self.check_bucket_write(actor, &name)?;
        if let Some(existing) = self.buckets.get(&name) {
            let version = bucket_version(existing);
            let accepted = Accepted::of("bucket.bind.contract", Change::at(self.seq));
            return Ok(Accepted { version: Some(version), ..accepted });
        }
        let content = match contract.backend {
            Backend::D1Json => BucketContent::Json { version: 0, value: Value::Null, setter: None, bytes: 0 },
            Backend::R2Assets => BucketContent::Assets { assets: BTreeMap::new() },
        };
        let seq = self.advance();
        self.buckets.insert(name.clone(), Bucket { contract, content });
        let mut change = Change::at(seq);
        change.buckets.insert(name);
        Ok(Accepted { version: Some(0), ..Accepted::of("bucket.bind.contract", change) })
    }

    /// bucket.value: the value replaced and the version incremented, under `if_version`
    /// (`conflict` with the current version); its bytes charged to the setter (quota.what-counts).
    pub(crate) fn bucket_set(
        &mut self,
        actor: &Actor,
        name: BucketName,
        value: Value,
        if_version: Option<u64>,
    ) -> Result<Accepted, Refusal> {
        let bucket = self.bound_bucket(&name, "bucket.backend-match")?;
        let BucketContent::Json { version, setter, bytes: old_bytes, .. } = &bucket.content else {
            return Err(self.incompatible(&name, "is an asset bucket"));
        };
        self.check_bucket_write(actor, &name)?;
        self.check_storage_enabled(actor)?;
        if let Some(expected) = if_version.filter(|expected| expected != version) {
            return Err(Refusal::new(
                "bucket.value",
                ErrorCode::Conflict,
                format!("{name} is at version {version}, not {expected}"),
            )
            .with_version(*version));
        }
        let bytes = canonical_size(&value);
        let mut charges = BTreeMap::from([(actor.user.clone(), bytes as i64)]);
        if let Some(setter) = setter {
            *charges.entry(setter.clone()).or_default() -= *old_bytes as i64;
        }
        self.check_quota(actor, &charges)?;
        let new_version = version + 1;
        let seq = self.advance();
        let stored = self.buckets.get_mut(&name).expect("checked above");
        stored.content =
            BucketContent::Json { version: new_version, value, setter: Some(actor.user.clone()), bytes };
        let mut change = Change::at(seq);
        change.buckets.insert(name);
        Ok(Accepted { version: Some(new_version), ..Accepted::of("bucket.value", change) })
    }

    /// bucket.delete: the value or every asset removed, everyone charged refunded, subscribers
    /// pushed `bucket:deleted`; the name is free to bind again.
    pub(crate) fn bucket_delete(&mut self, actor: &Actor, name: BucketName) -> Result<Accepted, Refusal> {
        self.bound_bucket(&name, "bucket.delete")?;
        self.check_bucket_write(actor, &name)?;
        let seq = self.advance();
        self.buckets.remove(&name);
        let mut change = Change::at(seq);
        change.buckets.insert(name);
        Ok(Accepted::of("bucket.delete", change))
    }

    /// assets.upload: a file stored under the object key `a<seq>`, its decoded bytes charged to
    /// the uploader.
    pub(crate) fn asset_upload(
        &mut self,
        actor: &Actor,
        name: BucketName,
        file_name: String,
        content_type: String,
        data_b64: &str,
    ) -> Result<Accepted, Refusal> {
        let bucket = self.bound_bucket(&name, "bucket.backend-match")?;
        if !matches!(bucket.content, BucketContent::Assets { .. }) {
            return Err(self.incompatible(&name, "is a JSON bucket"));
        }
        self.check_bucket_write(actor, &name)?;
        self.check_storage_enabled(actor)?;
        let Some(bytes) = base64_decoded(data_b64) else {
            return Err(Refusal::new(
                "assets.upload",
                ErrorCode::Invalid,
                "data_b64 is not standard padded base64",
            )
            .with_field("data_b64"));
        };
        let size = bytes.len() as u64;
        let max = self.settings.limits.asset_bytes_max as u64;
        if size > max {
            return Err(Refusal::new(
                "assets.upload",
                ErrorCode::LimitExceeded,
                format!("the file is {size} bytes, more than {max}"),
            ));
        }
        self.check_quota(actor, &BTreeMap::from([(actor.user.clone(), size as i64)]))?;
        let seq = self.advance();
        let object_key = ObjectKey::new(format!("a{seq}")).expect("a valid object key");
        let asset = AssetInfo {
            object_key: object_key.clone(),
            name: file_name,
            content_type,
            size,
            uploaded_by: actor.user.clone(),
            seq,
        };
        if let Some(BucketContent::Assets { assets }) =
            self.buckets.get_mut(&name).map(|stored| &mut stored.content)
        {
            assets.insert(object_key.clone(), asset);
        }
        let mut change = Change::at(seq);
        change.buckets.insert(name);
        Ok(Accepted { object_key: Some(object_key), ..Accepted::of("assets.upload", change) })
    }

    /// assets.delete: one asset removed, its uploader refunded; anyone who may write the bucket.
    pub(crate) fn asset_delete(
        &mut self,
        actor: &Actor,
        name: BucketName,
        object_key: ObjectKey,
    ) -> Result<Accepted, Refusal> {
        let bucket = self.bound_bucket(&name, "bucket.backend-match")?;
        let BucketContent::Assets { assets } = &bucket.content else {
            return Err(self.incompatible(&name, "is a JSON bucket"));
        };
        self.check_bucket_write(actor, &name)?;
        if !assets.contains_key(&object_key) {
            return Err(Refusal::new(
                "assets.delete",
                ErrorCode::NotFound,
                format!("{name} has no asset {object_key}"),
            ));
        }
        let seq = self.advance();
        if let Some(BucketContent::Assets { assets }) =
            self.buckets.get_mut(&name).map(|stored| &mut stored.content)
        {
            assets.remove(&object_key);
        }
        let mut change = Change::at(seq);
        change.buckets.insert(name);
        Ok(Accepted::of("assets.delete", change))
    }

    /// A bound bucket, or `not_found` (bucket.backend-match).
    pub(crate) fn bound_bucket(&self, name: &BucketName, rule: &'static str) -> Result<&Bucket, Refusal> {
        self.buckets
            .get(name)
            .ok_or_else(|| Refusal::new(rule, ErrorCode::NotFound, format!("bucket {name} is not bound")))
    }

    /// `incompatible`, carrying the bucket's contract (bucket.backend-match).
    pub(crate) fn incompatible(&self, name: &BucketName, why: &str) -> Refusal {
        let refusal =
            Refusal::new("bucket.backend-match", ErrorCode::Incompatible, format!("bucket {name} {why}"));
        match self.buckets.get(name) {
            Some(bucket) => refusal.with_contract(bucket.contract.clone()),
            None => refusal,
        }
    }

    /// bucket.user-scope: `user:<id>` only for that user; other buckets for every role.
    pub(crate) fn check_bucket_read(&self, viewer: &Actor, name: &BucketName) -> Result<(), Refusal> {
        match name.as_str().strip_prefix(USER_SCOPE_PREFIX) {
            Some(owner) if owner != viewer.user.as_str() => Err(Refusal::new(
                "bucket.user-scope",
                ErrorCode::Forbidden,
                format!("{name} is private to {owner}"),
            )),
            _ => Ok(()),
        }
    }

    /// bucket.user-scope and access.viewer-read-only: `user:<id>` only by that user, other
    /// buckets by members; never by a viewer.
    fn check_bucket_write(&self, actor: &Actor, name: &BucketName) -> Result<(), Refusal> {
        self.check_bucket_read(actor, name)?;
        if actor.role == Role::Viewer {
            return Err(Refusal::new(
                "access.viewer-read-only",
                ErrorCode::Forbidden,
                "a viewer can view but not modify",
            ));
        }
        Ok(())
    }

    /// quota.plans: the free plan has bucket and asset storage gated off.
    fn check_storage_enabled(&self, actor: &Actor) -> Result<(), Refusal> {
        if actor.plan == Plan::Free {
            return Err(Refusal::new(
                "quota.plans",
                ErrorCode::StorageDisabled,
                "the free plan has bucket and asset storage gated off",
            ));
        }
        Ok(())
    }

    /// quota.check: each charged user (by id) whose usage the write grows past their limit refuses
    /// it; landing exactly at the limit, or shrinking, is accepted.
    pub(crate) fn check_quota(&self, actor: &Actor, charges: &BTreeMap<UserId, i64>) -> Result<(), Refusal> {
        for (user, delta) in charges {
            if *delta <= 0 {
                continue;
            }
            let used = self.usage_of(user);
            let limit = self.limit_of(actor, user);
            if used + *delta as u64 > limit {
                return Err(Refusal::new(
                    "quota.check",
                    ErrorCode::QuotaExceeded,
                    format!("usage {used} + {delta} bytes exceeds the limit of {limit}"),
                )
                .with_quota(used, limit));
            }
        }
        Ok(())
    }

    /// quota.exact: everything stored and charged to `user`: documents they own (soft-deleted ones
    /// too, quota.soft-delete-counts), JSON bucket values they last set, assets they uploaded.
    pub(crate) fn usage_of(&self, user: &UserId) -> u64 {
        let documents: u64 = self.docs.values().filter(|doc| doc.owner == *user).map(|doc| doc.bytes()).sum();
        let buckets: u64 = self
            .buckets
            .values()
            .map(|bucket| match &bucket.content {
                BucketContent::Json { setter: Some(setter), bytes, .. } if setter == user => *bytes,
                BucketContent::Json { .. } => 0,
                BucketContent::Assets { assets } => {
                    assets.values().filter(|asset| asset.uploaded_by == *user).map(|asset| asset.size).sum()
                }
            })
            .sum();
        documents + buckets
    }

    /// quota.plans: free, or pro plus add-ons: the acting user's plan as `actor` says it, anyone
    /// else's as recorded (pro without add-ons for a user never recorded, the token default).
    fn limit_of(&self, actor: &Actor, user: &UserId) -> u64 {
        let plans = self.settings.plans;
        let (plan, addons) = if *user == actor.user {
            (actor.plan, actor.addons)
        } else {
            self.users.get(user).map_or((Plan::Pro, 0), |record| (record.plan, record.addons))
        };
        match plan {
            Plan::Free => plans.free_bytes,
            Plan::Pro => plans.pro_bytes + u64::from(addons) * plans.addon_bytes,
        }
    }
}

/// The version a bucket_bind ack carries: a JSON bucket's, 0 for an asset bucket.
fn bucket_version(bucket: &Bucket) -> u64 {
    match &bucket.content {
        BucketContent::Json { version, .. } => *version,
        BucketContent::Assets { .. } => 0,
    }
}
