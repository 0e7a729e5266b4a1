//! Agent registry: registration (upsert by name) and the liveness view.

use dataminer_wire::{AgentView, RegisterAgentRequest, Stage};
use sqlx::Row;
use tracing::instrument;

use super::{Result, Store, StoreError};

impl Store {
    /// Registers (or re-registers, keeping the id) an agent by name.
    #[instrument(skip(self, req), fields(name = %req.name))]
    pub async fn register_agent(&self, req: &RegisterAgentRequest) -> Result<i64> {
        let stages = serde_json::to_string(&req.stages).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let caps = serde_json::to_string(&req.capabilities).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let now = self.now(&mut tx).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO agents (name, node, stages, capabilities, version, protocol_version, registered_at, last_seen) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (name) DO UPDATE SET node = $2, stages = $3, \
             capabilities = $4, version = $5, protocol_version = $6, registered_at = $7, last_seen = $7 RETURNING id",
        )
        .bind(&req.name)
        .bind(req.node.clone())
        .bind(stages)
        .bind(caps)
        .bind(&req.version)
        .bind(i64::from(req.protocol_version))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn list_agents(&self) -> Result<Vec<AgentView>> {
        let now = self.now_read().await?;
        let alive_after = now - self.settings().agent_alive_ms;
        let rows = sqlx::query(
            "SELECT id, name, node, stages, capabilities, version, registered_at, last_seen FROM agents ORDER BY name",
        )
        .fetch_all(self.reader()?)
        .await?;
        rows.iter()
            .map(|r| {
                let stages: Vec<Stage> = serde_json::from_str(&r.try_get::<String, _>("stages")?)
                    .map_err(|e| StoreError::Corrupt(format!("agent stages: {e}")))?;
                let capabilities: Vec<String> = serde_json::from_str(&r.try_get::<String, _>("capabilities")?)
                    .map_err(|e| StoreError::Corrupt(format!("agent capabilities: {e}")))?;
                let last_seen: i64 = r.try_get("last_seen")?;
                Ok(AgentView {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    node: r.try_get("node")?,
                    stages,
                    capabilities,
                    version: r.try_get("version")?,
                    registered_at_ms: r.try_get("registered_at")?,
                    last_seen_ms: last_seen,
                    alive: last_seen >= alive_after,
                })
            })
            .collect()
    }
}
