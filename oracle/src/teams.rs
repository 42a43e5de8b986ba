//! Users, teams, members and invites (§15).

use crate::state::{Accepted, Actor, Change, Connection, Membership, Refusal, Team, UserRecord};
use crate::{Conn, Identity, Oracle, Output};
use roomlab_protocol::{ErrorCode, Role, TeamId, UserId};
use std::collections::{BTreeMap, BTreeSet};

impl Oracle {
    /// users.recorded: an accepted connection records its user; a user the room has not seen, or
    /// a token that changes their effective role, is a change of sys:users at a new sequence.
    pub(crate) fn open_connection(&mut self, conn: Conn, identity: Identity) -> Vec<Output> {
        let connection = Connection {
            identity: identity.clone(),
            client: None,
            closed: false,
            subscriptions: BTreeMap::new(),
            yjs_open: BTreeSet::new(),
            announced: BTreeMap::new(),
        };
        self.connections.insert(conn, connection);
        let listed_before = self.users.get(&identity.user).map(UserRecord::listed_role);
        let record = self.users.entry(identity.user.clone()).or_insert(UserRecord {
            token_role: identity.role,
            assigned: None,
            plan: identity.plan,
            addons: identity.addons,
        });
        record.token_role = identity.role;
        record.plan = identity.plan;
        record.addons = identity.addons;
        if listed_before == Some(record.listed_role()) {
            return Vec::new();
        }
        let seq = self.advance();
        let mut change = Change::at(seq);
        change.users = true;
        self.stamp_views(&change);
        self.publish(&change)
    }

    /// users.set-role: an admin sets a recorded user's effective role in the room.
    pub(crate) fn user_set_role(
        &mut self,
        actor: &Actor,
        user: UserId,
        role: Role,
    ) -> Result<Accepted, Refusal> {
        Self::check_admin(actor, "users.set-role", "set roles")?;
        if !self.users.contains_key(&user) {
            return Err(Refusal::new(
                "users.set-role",
                ErrorCode::NotFound,
                format!("{user} has never connected"),
            ));
        }
        let seq = self.advance();
        let record = self.users.get_mut(&user).expect("checked above");
        record.assigned = Some(role);
        let mut change = Change::at(seq);
        // users.set-role: setting a role is a change of sys:users even when the role stays the
        // same (from now on it is the room's choice, not the token's).
        change.users = true;
        // Every connection of the user reads with the new role from now on.
        change.access = true;
        Ok(Accepted::of("users.set-role", change))
    }

    /// teams.admin: an admin creates a team; `exists` if it does.
    pub(crate) fn team_create(
        &mut self,
        actor: &Actor,
        team: TeamId,
        name: String,
    ) -> Result<Accepted, Refusal> {
        Self::check_admin(actor, "teams.admin", "manage teams")?;
        if self.teams.contains_key(&team) {
            return Err(Refusal::new("teams.admin", ErrorCode::Exists, format!("team {team} exists")));
        }
        self.teams.insert(team, Team { name, members: BTreeMap::new() });
        Ok(self.teams_changed("teams.admin"))
    }

    /// teams.admin: an admin deletes a team and its memberships.
    pub(crate) fn team_delete(&mut self, actor: &Actor, team: TeamId) -> Result<Accepted, Refusal> {
        Self::check_admin(actor, "teams.admin", "manage teams")?;
        self.existing_team(&team)?;
        self.teams.remove(&team);
        Ok(self.teams_changed("teams.admin"))
    }

    /// teams.invite-pending: an admin adds a pending membership; `exists` if the user is invited
    /// or a member.
    pub(crate) fn team_invite(
        &mut self,
        actor: &Actor,
        team: TeamId,
        user: UserId,
    ) -> Result<Accepted, Refusal> {
        Self::check_admin(actor, "teams.admin", "manage teams")?;
        if self.existing_team(&team)?.members.contains_key(&user) {
            return Err(Refusal::new(
                "teams.invite-pending",
                ErrorCode::Exists,
                format!("{user} is already invited to or a member of {team}"),
            ));
        }
        self.teams.get_mut(&team).expect("checked above").members.insert(user, Membership::Pending);
        Ok(self.teams_changed("teams.invite-pending"))
    }

    /// teams.invite-pending: the invited user accepts, making the membership active; `not_found`
    /// without an invitation.
    pub(crate) fn team_accept(&mut self, actor: &Actor, team: TeamId) -> Result<Accepted, Refusal> {
        let invited = self.existing_team(&team)?.members.get(&actor.user) == Some(&Membership::Pending);
        if !invited {
            return Err(Refusal::new(
                "teams.invite-pending",
                ErrorCode::NotFound,
                format!("{} has no invitation to {team}", actor.user),
            ));
        }
        self.teams
            .get_mut(&team)
            .expect("checked above")
            .members
            .insert(actor.user.clone(), Membership::Active);
        Ok(self.teams_changed("teams.invite-pending"))
    }

    /// teams.invite-pending: an admin removes a member or an invitation.
    pub(crate) fn team_remove(
        &mut self,
        actor: &Actor,
        team: TeamId,
        user: UserId,
    ) -> Result<Accepted, Refusal> {
        Self::check_admin(actor, "teams.admin", "manage teams")?;
        if !self.existing_team(&team)?.members.contains_key(&user) {
            return Err(Refusal::new(
                "teams.invite-pending",
                ErrorCode::NotFound,
                format!("{user} is neither invited to nor a member of {team}"),
            ));
        }
        self.teams.get_mut(&team).expect("checked above").members.remove(&user);
        Ok(self.teams_changed("teams.invite-pending"))
    }

    /// A team, or `not_found`.
    fn existing_team(&self, team: &TeamId) -> Result<&Team, Refusal> {
        self.teams.get(team).ok_or_else(|| {
            Refusal::new("teams.admin", ErrorCode::NotFound, format!("team {team} does not exist"))
        })
    }

    /// A change of sys:teams at a new sequence.
    fn teams_changed(&mut self, rule: &'static str) -> Accepted {
        let seq = self.advance();
        let mut change = Change::at(seq);
        change.teams = true;
        Accepted::of(rule, change)
    }
}
