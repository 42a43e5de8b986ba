//! Staged sessions (§12): private writes, committed atomically at one sequence or not at all.

use crate::access::WriteKind;
use crate::documents::{data_object, refuse_system_id};
use crate::json::canonical_size;
use crate::state::{Accepted, Actor, Change, Document, Refusal, Staged};
use crate::Oracle;
use roomlab_protocol::{DocId, DocType, ErrorCode, UserId};
use serde_json::Value;
use std::collections::BTreeMap;

/// A staged write checked for commit: the document it will store, and whether it creates it.
struct Prepared {
    doc: DocId,
    stored: Document,
    creates: bool,
}

impl Oracle {
    /// stage.put: data staged in the caller's session with the document's current seq as its base
    /// (0 when missing, `deleted` when soft-deleted); no sequence is taken.
    pub(crate) fn stage_put(
        &mut self,
        actor: &Actor,
        doc: DocId,
        doc_type: DocType,
        data: Value,
    ) -> Result<Accepted, Refusal> {
        refuse_system_id(&doc)?;
        let base_seq = match self.docs.get(&doc) {
            Some(existing) if !existing.is_live() => {
                return Err(Refusal::new("docs.missing", ErrorCode::Deleted, format!("{doc} is deleted"))
                    .with_seq(existing.seq))
            }
            Some(existing) => {
                self.check_write(actor, existing)?;
                existing.seq
            }
            None => {
                self.check_create(actor, &doc_type)?;
                0
            }
        };
        let data = Value::Object(data_object(data)?);
        self.check_doc_size(canonical_size(&data))?;
        let session = self.sessions.get(&actor.user);
        let staged_count = session.map_or(0, BTreeMap::len);
        let max = self.settings.limits.staged_docs_max;
        if staged_count >= max && !session.is_some_and(|session| session.contains_key(&doc)) {
            return Err(Refusal::new(
                "stage.discard",
                ErrorCode::LimitExceeded,
                format!("a session holds at most {max} documents"),
            ));
        }
        self.sessions.entry(actor.user.clone()).or_default().insert(doc, Staged { doc_type, data, base_seq });
        Ok(Accepted::of("stage.put", self.session_change(&actor.user)))
    }

    /// stage.discard: the session is dropped; no sequence is taken.
    pub(crate) fn stage_discard(&mut self, actor: &Actor) -> Accepted {
        self.sessions.remove(&actor.user);
        Accepted::of("stage.discard", self.session_change(&actor.user))
    }

    /// stage.commit.atomic: every staged write at one new sequence, or none; stage.commit.empty.
    pub(crate) fn stage_commit(&mut self, actor: &Actor, now_ms: u64) -> Result<Accepted, Refusal> {
        let session = self.sessions.get(&actor.user).cloned().unwrap_or_default();
        if session.is_empty() {
            return Ok(Accepted::of("stage.commit.empty", Change::at(self.seq)));
        }
        self.check_bases(&session)?;
        let mut prepared = Vec::new();
        for (doc, staged) in &session {
            prepared.push(self.prepare_staged(actor, doc, staged, now_ms)?);
        }
        let mut charges: BTreeMap<UserId, i64> = BTreeMap::new();
        for entry in &prepared {
            let old_bytes = self.docs.get(&entry.doc).map_or(0, |old| old.bytes() as i64);
            *charges.entry(entry.stored.owner.clone()).or_default() +=
                entry.stored.bytes() as i64 - old_bytes;
        }
        self.check_quota(actor, &charges)?;
        let seq = self.advance();
        let mut change = Change::at(seq);
        for mut entry in prepared {
            entry.stored.seq = seq;
            change.index |= entry.creates;
            change = change.touching(&entry.doc, &entry.stored.doc_type);
            self.docs.insert(entry.doc, entry.stored);
        }
        self.sessions.remove(&actor.user);
        change.sessions.insert(actor.user.clone());
        Ok(Accepted::of("stage.commit.atomic", change))
    }

    /// stage.commit.atomic: `conflict` naming the first staged document (by id) whose state moved
    /// from its base: its seq changed, or it was created, deleted or purged since.
    fn check_bases(&self, session: &BTreeMap<DocId, Staged>) -> Result<(), Refusal> {
        for (doc, staged) in session {
            let current = self.docs.get(doc);
            let unmoved = match current {
                None => staged.base_seq == 0,
                Some(existing) => existing.is_live() && existing.seq == staged.base_seq,
            };
            if !unmoved {
                let seq = current.map_or(0, |existing| existing.seq);
                return Err(Refusal::new(
                    "stage.commit.atomic",
                    ErrorCode::Conflict,
                    format!("{doc} moved from its staged base {}", staged.base_seq),
                )
                .with_doc(doc.clone())
                .with_seq(seq));
            }
        }
        Ok(())
    }

    /// One staged write checked like any write (access, schema, size) and turned into the
    /// document it will store.
    fn prepare_staged(
        &self,
        actor: &Actor,
        doc: &DocId,
        staged: &Staged,
        now_ms: u64,
    ) -> Result<Prepared, Refusal> {
        let Value::Object(data) = staged.data.clone() else { unreachable!("staged data is an object") };
        match self.docs.get(doc) {
            None => {
                self.check_create(actor, &staged.doc_type)?;
                let data =
                    self.shaped(&staged.doc_type, WriteKind::Create { creator: &actor.user }, data, now_ms)?;
                let stored = Document::new(staged.doc_type.clone(), 0, actor.user.clone(), data);
                self.check_doc_size(stored.bytes())?;
                Ok(Prepared { doc: doc.clone(), stored, creates: true })
            }
            Some(existing) => {
                self.check_write(actor, existing)?;
                let data =
                    self.shaped(&existing.doc_type, WriteKind::Update { old: &existing.data }, data, now_ms)?;
                let mut stored = existing.clone();
                stored.set_data(data);
                self.check_doc_size(stored.bytes())?;
                Ok(Prepared { doc: doc.clone(), stored, creates: false })
            }
        }
    }

    /// A change of a user's session, at the current sequence (stage.put takes none).
    fn session_change(&self, user: &UserId) -> Change {
        let mut change = Change::at(self.seq);
        change.sessions.insert(user.clone());
        change
    }
}
