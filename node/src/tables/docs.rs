//! Documents in a table: each key's document lives in its partition, written on the
//! partition's owners and read from a copy holding the read's causal token, as values are.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;

use super::route::{Served, blocking, refusal};
use super::{Table, TableError};
use crate::causal::CausalToken;
use crate::node::{Document, NodeTopic};
use crate::wire::DocWritten;

/// What a document write does to its document.
#[derive(Clone, Debug, PartialEq)]
pub enum DocChange {
    /// The document becomes this one.
    Put(Document),
    /// This merge patch is applied to it.
    Patch(Document),
    /// It is deleted.
    Delete,
}

impl Table {
    /// Applies `change` to the document `key` on its partition's owners, acknowledged as the
    /// table's writes are; `None` for a delete of a document that has no field.
    pub async fn doc_write(&self, key: &str, change: DocChange) -> Result<Option<DocWritten>, TableError> {
        let partition = self.partition_of(key);
        let query = self.write_query();
        let (method, body) = match &change {
            DocChange::Put(doc) => (reqwest::Method::PUT, serde_json::to_vec(doc).unwrap_or_default()),
            DocChange::Patch(patch) => (reqwest::Method::PATCH, serde_json::to_vec(patch).unwrap_or_default()),
            DocChange::Delete => (reqwest::Method::DELETE, Vec::new()),
        };
        let request = |http: &reqwest::Client, api: &str| {
            http.request(method.clone(), self.doc_url(api, key))
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        match self.serve(partition, request).await? {
            Served::Here(topic) => self.doc_write_here(partition, &topic, key, change).await,
            Served::There(response) if response.status() == StatusCode::NOT_FOUND => Ok(None),
            Served::There(response) => self.write_reply(partition, response).await.map(Some),
        }
    }

    /// Applies `change` to this node's copy `topic` of `partition` and waits for its
    /// acknowledgement.
    pub(crate) async fn doc_write_here(
        &self,
        partition: u32,
        topic: &NodeTopic,
        key: &str,
        change: DocChange,
    ) -> Result<Option<DocWritten>, TableError> {
        let (copy, key) = (topic.clone(), key.as_bytes().to_vec());
        let deleting = change == DocChange::Delete;
        let commit = blocking(move || {
            Ok(match &change {
                DocChange::Put(doc) => copy.doc_put(&key, doc, None)?,
                DocChange::Patch(patch) => copy.doc_patch(&key, patch, None)?,
                DocChange::Delete => copy.doc_delete(&key)?,
            })
        })
        .await?;
        if commit.is_none() && deleting {
            return Ok(None);
        }
        let acked = self.acknowledge(partition, topic, commit).await?;
        Ok(Some(DocWritten {
            acknowledged: acked.acknowledged.max(1),
            causal_token: acked.token.to_string(),
            cid: commit.map(|commit| commit.cid.to_string()),
            expires_ms: None,
            height: commit.map(|commit| commit.height),
        }))
    }

    /// The document `key` and the causal token it was read at, from a copy holding what
    /// [`Table::after`] names.
    pub async fn doc_read(&self, key: &str) -> Result<(Option<Document>, CausalToken), TableError> {
        let partition = self.partition_of(key);
        let query = self.query(partition);
        match self.serve(partition, |http, api| http.get(self.doc_url(api, key)).query(&query)).await? {
            Served::Here(topic) => {
                let (copy, key) = (topic.clone(), key.as_bytes().to_vec());
                let doc = blocking(move || Ok(copy.doc(&key)?)).await?;
                Ok((doc, self.read_at(partition, &topic)))
            }
            Served::There(response) => {
                let token = self.token_from(partition, &response);
                match response.status() {
                    StatusCode::NOT_FOUND => Ok((None, token)),
                    status if status.is_success() => {
                        let doc = response.json().await.map_err(|e| TableError::Unavailable {
                            table: self.def.name.clone(),
                            partition,
                            reason: format!("a holder's document is unreadable: {e}"),
                        })?;
                        Ok((Some(doc), token))
                    }
                    _ => Err(refusal(response).await),
                }
            }
        }
    }

    fn doc_url(&self, api: &str, key: &str) -> String {
        format!("{api}/v1/tables/{}/docs/{}", self.def.name, utf8_percent_encode(key, NON_ALPHANUMERIC))
    }
}
