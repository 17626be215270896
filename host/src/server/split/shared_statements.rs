//! Binary-protocol prepared statements of a multiplexed session: they
//! outlive the backend sessions they ran on. The client knows each by an id
//! of the session's own; a backend session keeps the statements prepared
//! on it by text ([`prepared::Cache`], bounded, least recently used closed
//! first) for any session that borrows it, and an execution prepares its
//! statement there first if need be. Every execution sends the parameter
//! types (a shared statement may have run with another session's types
//! last). A statement with long data sent, or a cursor open, keeps its
//! backend session until executed, read to its end, reset or closed.

use bytes::Bytes;

use super::{Cx, Failed, Role, SplitSession, exchange, prepared};
use crate::protocol::{OkPacket, StatusFlags};
use crate::server::{codes, relay};
use crate::sql::{Target, rule};

/// MariaDB's id for "the statement prepared last" (in a pipeline).
const LAST_PREPARED: u32 = u32::MAX;

impl SplitSession {
    /// COM_STMT_PREPARE, EXECUTE, SEND_LONG_DATA, CLOSE, RESET and FETCH
    /// of a multiplexed session.
    pub(super) async fn shared_statement(
        &mut self,
        payload: Bytes,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        if payload[0] == 0x16 {
            return self.prepare_shared(payload, cx).await;
        }
        let named = match prepared::id_of(&payload) {
            Some(LAST_PREPARED) => Some(self.last_statement_id),
            other => other,
        };
        let Some(id) = named.filter(|id| self.prepared.get(*id).is_some()) else {
            let id = named.unwrap_or_default();
            return match payload[0] {
                // No answer: as the server, nothing happens.
                0x18 | 0x19 => Ok(()),
                0x17 => Err(Failed::Refused(codes::unknown_statement(
                    id,
                    "mysqld_stmt_execute",
                ))),
                0x1a => Err(Failed::Refused(codes::unknown_statement(
                    id,
                    "mysqld_stmt_reset",
                ))),
                _ => Err(Failed::Refused(codes::unknown_statement(
                    id,
                    "mysqld_stmt_fetch",
                ))),
            };
        };
        match payload[0] {
            0x17 => self.execute_shared(id, &payload, cx).await,
            0x18 => self.long_data_shared(id, &payload, cx).await,
            0x19 => self.close_shared(id, cx).await,
            0x1a => self.reset_shared(id, &payload, cx).await,
            _ => self.fetch_shared(id, &payload, cx).await,
        }
    }

    /// COM_STMT_PREPARE: on the writer; the client hears the answer under
    /// an id of the session's own.
    async fn prepare_shared(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        self.ensure(Role::Writer, cx).await?;
        let id = self.prepared.next_id(self.last_statement_id);
        let answer = self
            .run_renaming(Role::Writer, &payload, Some(id), cx)
            .await?;
        let Some((backend_id, params)) = answer.first.as_deref().and_then(prepared::prepare_ok)
        else {
            return Ok(());
        };
        let text = payload.slice(1..);
        self.prepared.prepared(id, params, text.clone());
        // Its ids on backend sessions are looked up at each use.
        self.prepared.lost(Role::Writer);
        self.last_statement_id = id;
        self.cache(Role::Writer, text, backend_id, cx).await;
        Ok(())
    }

    /// Records `text` as `backend_id` on the backend session of `role`,
    /// closing there what that pushes out.
    async fn cache(&mut self, role: Role, text: Bytes, backend_id: u32, cx: &Cx<'_>) {
        let Some(side) = self.sides[role as usize].as_mut() else {
            return;
        };
        for old in side.stmts.insert(text, backend_id) {
            // COM_STMT_CLOSE has no answer.
            if exchange(side, &prepared::close_command(old), None, cx)
                .await
                .is_err()
            {
                self.close(role, cx).await;
                return;
            }
        }
    }

    /// The id of `text` on the backend session of `role` (open), prepared
    /// there first if need be; `None` if it cannot be.
    async fn prepared_there(
        &mut self,
        role: Role,
        text: &Bytes,
        cx: &Cx<'_>,
    ) -> Result<Option<u32>, Failed> {
        let side = self.sides[role as usize].as_mut().expect("open");
        if let Some(id) = side.stmts.get(text) {
            return Ok(Some(id));
        }
        let mut command = Vec::with_capacity(1 + text.len());
        command.push(0x16);
        command.extend_from_slice(text);
        let answer = exchange(side, &command, None, cx).await?;
        match answer.first.as_deref().and_then(prepared::prepare_ok) {
            Some((id, _)) if !answer.err => {
                self.cache(role, text.clone(), id, cx).await;
                Ok(Some(id))
            }
            _ => Ok(None),
        }
    }

    /// COM_STMT_EXECUTE: where the rule sends the statement's text, on
    /// whichever backend session the session has there.
    async fn execute_shared(&mut self, id: u32, payload: &[u8], cx: &Cx<'_>) -> Result<(), Failed> {
        let statement = self.prepared.get(id).expect("known");
        let (class, text, long_data) =
            (statement.class, statement.text.clone(), statement.long_data);
        let view = self.routing.view(self.statuses());
        let target = self
            .hook(&text, &class, &view, cx)
            .unwrap_or_else(|| rule(&class, &view).0);
        let wanted = match target {
            Target::Reader if !long_data => self.causal(cx).await?,
            _ => Role::Writer,
        };
        let mut role = self.ensure(wanted, cx).await?;
        let mut backend_id = self.prepared_there(role, &text, cx).await?;
        if backend_id.is_none() && role == Role::Reader {
            role = self.ensure(Role::Writer, cx).await?;
            backend_id = self.prepared_there(role, &text, cx).await?;
        }
        let Some(backend_id) = backend_id else {
            return Err(Failed::Refused(codes::backend_unsupported(
                "the statement could not be prepared on a backend session",
            )));
        };
        let statement = self.prepared.get_mut(id).expect("known");
        // A fresh binding there: the types go with the execution.
        statement.prepared_on(role, backend_id);
        let sent = statement.execute_for(payload, role);
        statement.ran_on = Some(role);
        statement.long_data = false;
        let answer = self.run_on(role, &sent, cx).await?;
        if super::names_last_insert_id(&text) {
            self.last_insert_id_may_change(role);
        }
        let status = self.side(role).map(|s| s.status);
        if let Some(statement) = self.prepared.get_mut(id) {
            statement.cursor = !answer.err
                && status.is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_CURSOR_EXISTS));
        }
        self.ran(role, &class, &answer, cx).await;
        Ok(())
    }

    /// COM_STMT_SEND_LONG_DATA: to the writer, which keeps it (and the
    /// backend session) for the next execution. No answer.
    async fn long_data_shared(
        &mut self,
        id: u32,
        payload: &[u8],
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        self.ensure(Role::Writer, cx).await?;
        let text = self.prepared.get(id).expect("known").text.clone();
        let Some(backend_id) = self.prepared_there(Role::Writer, &text, cx).await? else {
            // No answer to give: the execution reports the failure.
            return Ok(());
        };
        let statement = self.prepared.get_mut(id).expect("known");
        if statement.id_on(Role::Writer) != Some(backend_id) {
            statement.prepared_on(Role::Writer, backend_id);
        }
        statement.long_data = true;
        let sent = statement.for_backend(payload, Role::Writer);
        self.run_on(Role::Writer, &sent, cx).await.map(|_| ())
    }

    /// Where statement `id`'s long data or cursor is: the backend session
    /// it ran on (or got long data on), and its id there.
    fn bound(&self, id: u32) -> Option<(Role, u32)> {
        let statement = self.prepared.get(id)?;
        [Role::Writer, Role::Reader].into_iter().find_map(|role| {
            let bid = statement.id_on(role)?;
            self.side(role)?;
            Some((role, bid))
        })
    }

    /// COM_STMT_CLOSE (no answer): the session forgets it; the backend
    /// session keeps it for others, cleared of long data or a cursor.
    async fn close_shared(&mut self, id: u32, cx: &Cx<'_>) -> Result<(), Failed> {
        let statement = self.prepared.get(id).expect("known");
        let pending = statement.long_data || statement.cursor;
        if pending && let Some((role, backend_id)) = self.bound(id) {
            let mut reset = vec![0x1a];
            reset.extend_from_slice(&backend_id.to_le_bytes());
            let side = self.sides[role as usize].as_mut().expect("open");
            if !matches!(exchange(side, &reset, None, cx).await, Ok(a) if !a.err) {
                self.close(role, cx).await;
            }
        }
        self.prepared.close(id);
        Ok(())
    }

    /// COM_STMT_RESET: on the backend session that has its long data or
    /// cursor; with neither, there is nothing to reset: OK.
    async fn reset_shared(&mut self, id: u32, payload: &[u8], cx: &Cx<'_>) -> Result<(), Failed> {
        let statement = self.prepared.get_mut(id).expect("known");
        let pending = statement.long_data || statement.cursor;
        statement.long_data = false;
        statement.cursor = false;
        if pending && let Some((role, _)) = self.bound(id) {
            let sent = self
                .prepared
                .get(id)
                .expect("known")
                .for_backend(payload, role);
            return self.run_on(role, &sent, cx).await.map(|_| ());
        }
        let status = self
            .sides
            .iter()
            .flatten()
            .map(|s| s.status)
            .next()
            .unwrap_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        let ok = OkPacket {
            affected_rows: 0,
            last_insert_id: 0,
            status,
            warnings: 0,
        };
        self.client
            .send(1, &ok.encode())
            .await
            .map_err(|_| Failed::End(relay::End::ClientWriteFailed))
    }

    /// COM_STMT_FETCH: from the cursor's backend session.
    async fn fetch_shared(&mut self, id: u32, payload: &[u8], cx: &Cx<'_>) -> Result<(), Failed> {
        let statement = self.prepared.get(id).expect("known");
        let on = statement.ran_on.filter(|_| statement.cursor);
        let Some((role, _)) = on.and_then(|_| self.bound(id)) else {
            return Err(Failed::Refused(codes::no_open_cursor(id)));
        };
        let sent = statement.for_backend(payload, role);
        let answer = self.run_on(role, &sent, cx).await?;
        let status = self.side(role).map(|s| s.status);
        if let Some(statement) = self.prepared.get_mut(id) {
            statement.cursor = !answer.err
                && !status.is_some_and(|s| s.contains(StatusFlags::SERVER_STATUS_LAST_ROW_SENT));
        }
        Ok(())
    }
}
