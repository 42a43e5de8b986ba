//! Mutants: realistic bugs planted in the engine and the client, to prove that the simulation and the
//! conformance suite catch what they claim to.
//!
//! A mutant is active only when a configuration names it, and only in a build with the `mutants`
//! feature: without it, [`Mutant::planted`] is a constant `false` and every planted branch is dead
//! code. `roomlab serve --mutant NAME` and `roomlab mutants` need `--features mutants`.

use std::fmt;

/// One planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// The client does not re-send its subscriptions after a reconnect (R: "On reconnect, all active
    /// subscriptions are re-sent").
    SkipResubscribe,
    /// A delete pushes nothing to the document's subscribers (D: "pushed a doc:deleted event").
    NoDocDeletedPush,
    /// A restore stamps the document with the restore's sequence (D: "at the exact sequence it left").
    RestoreBumpsSeq,
    /// Creating a soft-deleted id answers `exists` instead of `deleted`.
    CreateDeletedAnswersExists,
    /// A purge does not refund the owner's quota.
    PurgeKeepsUsage,
    /// Quota is checked on the usage before the write instead of the usage after it, so one write
    /// can take a user past their limit.
    QuotaCheckedBeforeWrite,
    /// The ack leaves before the commit: the transaction stays open until the next message, so a
    /// crash in between loses an acknowledged write.
    AckBeforeCommit,
    /// A replayed mutation id is executed again instead of answered from the replay window.
    ReplayAppliedTwice,
    /// An admin reads owner-scoped documents of other users.
    OwnerReadByAdmin,
    /// List items with equal keys keep their arrival order instead of item-id order.
    ListTiesByArrival,
    /// `sys:` documents can be removed.
    SysDocRemovable,
    /// A viewer's put and patch are applied.
    ViewerCanWrite,
    /// `bucket_set` ignores `if_version`.
    BucketGuardIgnored,
    /// A viewer's Yjs update is merged and relayed (R: roles; docs/PROTOCOL.md yjs.access).
    ViewerYjsApplied,
    /// A write that lands exactly at the user's limit is refused (an off-by-one in quota.check).
    QuotaEdgeRefused,
    /// A failed commit's error is ignored: the writer is acknowledged and the room's memory moves
    /// on, though the disk took nothing (docs/PROTOCOL.md ack.after-commit and
    /// mutation.replay.internal-not-remembered).
    CommitErrorIgnored,
    /// After a mutation answered `internal` the connection stays open and the room goes on with
    /// what it sent next (docs/PROTOCOL.md mutation.replay.internal-not-remembered).
    InternalKeepsConnection,
    /// The room acknowledges a commit before the disk has it: the WAL is synced only at checkpoints
    /// (SQLite's `synchronous=NORMAL`), so a power loss takes acknowledged writes (docs/PROTOCOL.md
    /// ack.durable).
    AckBeforeSync,
}

impl Mutant {
    /// Every mutant, in catalogue order.
    pub const ALL: [Mutant; 18] = [
        Mutant::SkipResubscribe,
        Mutant::NoDocDeletedPush,
        Mutant::RestoreBumpsSeq,
        Mutant::CreateDeletedAnswersExists,
        Mutant::PurgeKeepsUsage,
        Mutant::QuotaCheckedBeforeWrite,
        Mutant::AckBeforeCommit,
        Mutant::ReplayAppliedTwice,
        Mutant::OwnerReadByAdmin,
        Mutant::ListTiesByArrival,
        Mutant::SysDocRemovable,
        Mutant::ViewerCanWrite,
        Mutant::BucketGuardIgnored,
        Mutant::ViewerYjsApplied,
        Mutant::QuotaEdgeRefused,
        Mutant::CommitErrorIgnored,
        Mutant::InternalKeepsConnection,
        Mutant::AckBeforeSync,
    ];

    /// Whether this build can plant mutants (the `mutants` feature).
    pub const COMPILED: bool = cfg!(feature = "mutants");

    /// The mutant's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::SkipResubscribe => "skip-resubscribe",
            Mutant::NoDocDeletedPush => "no-doc-deleted-push",
            Mutant::RestoreBumpsSeq => "restore-bumps-seq",
            Mutant::CreateDeletedAnswersExists => "create-deleted-answers-exists",
            Mutant::PurgeKeepsUsage => "purge-keeps-usage",
            Mutant::QuotaCheckedBeforeWrite => "quota-checked-before-write",
            Mutant::AckBeforeCommit => "ack-before-commit",
            Mutant::ReplayAppliedTwice => "replay-applied-twice",
            Mutant::OwnerReadByAdmin => "owner-read-by-admin",
            Mutant::ListTiesByArrival => "list-ties-by-arrival",
            Mutant::SysDocRemovable => "sys-doc-removable",
            Mutant::ViewerCanWrite => "viewer-can-write",
            Mutant::BucketGuardIgnored => "bucket-guard-ignored",
            Mutant::ViewerYjsApplied => "viewer-yjs-applied",
            Mutant::QuotaEdgeRefused => "quota-edge-refused",
            Mutant::CommitErrorIgnored => "commit-error-ignored",
            Mutant::InternalKeepsConnection => "internal-keeps-connection",
            Mutant::AckBeforeSync => "ack-before-sync",
        }
    }

    /// The mutant named `name`.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The source document whose rule it breaks: R (records), D (documents) or S (storage).
    pub fn source(self) -> char {
        match self {
            Mutant::SkipResubscribe | Mutant::ReplayAppliedTwice | Mutant::OwnerReadByAdmin => 'R',
            Mutant::ViewerCanWrite | Mutant::AckBeforeCommit | Mutant::ViewerYjsApplied => 'R',
            Mutant::CommitErrorIgnored | Mutant::InternalKeepsConnection | Mutant::AckBeforeSync => 'R',
            Mutant::NoDocDeletedPush | Mutant::RestoreBumpsSeq | Mutant::CreateDeletedAnswersExists => 'D',
            Mutant::ListTiesByArrival | Mutant::SysDocRemovable => 'D',
            Mutant::PurgeKeepsUsage | Mutant::QuotaCheckedBeforeWrite | Mutant::BucketGuardIgnored => 'S',
            Mutant::QuotaEdgeRefused => 'S',
        }
    }

    /// Whether a server's peer can see it (client mutants are not: the conformance suite grades
    /// servers).
    pub fn in_server(self) -> bool {
        self != Mutant::SkipResubscribe
    }

    /// Whether the conformance suite, which sees a server over the wire (and through the target's
    /// hooks: restart, a failed commit), can make it show: every mutant of the server but
    /// `ack-before-sync`, which only a power loss shows (a restart keeps the page cache).
    pub fn wire_visible(self) -> bool {
        self.in_server() && self != Mutant::AckBeforeSync
    }

    /// Whether `self` is planted, given the configured mutant. Always false without the feature.
    #[inline(always)]
    pub fn planted(self, configured: Option<Mutant>) -> bool {
        cfg!(feature = "mutants") && configured == Some(self)
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mutant in Mutant::ALL {
            assert_eq!(Mutant::from_name(mutant.name()), Some(mutant));
            assert!(!mutant.planted(None));
            assert_eq!(mutant.planted(Some(mutant)), Mutant::COMPILED);
        }
        assert_eq!(Mutant::from_name("nope"), None);
    }
}
