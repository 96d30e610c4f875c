//! The API's opaque cursors: base64url of a small JSON object. Opaque to
//! callers (they store and pass it back), checked on the way in: a cursor
//! that does not decode, or belongs to another listing, is bad input.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::connection::ConnectionId;
use crate::sync::records::ChangePlace;

/// The longest cursor accepted (a connection id, a provider and a record id fit easily).
const MAX_CURSOR: usize = 2048;

/// Where a listing goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Cursor {
    /// `GET /connections`: the provider being listed and the last id read
    /// (empty: from its first connection).
    #[serde(rename = "c")]
    Connections {
        #[serde(rename = "p")]
        provider: String,
        #[serde(rename = "a")]
        after: String,
    },
    /// `GET /records/...`: the job and the place of the last change read.
    #[serde(rename = "r")]
    Changes {
        #[serde(rename = "j")]
        job: String,
        #[serde(rename = "s")]
        seq: u64,
        #[serde(rename = "i")]
        id: String,
    },
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(text: &str) -> Result<Cursor, String> {
        let malformed = || "not a cursor this API gave out".to_owned();
        if text.len() > MAX_CURSOR {
            return Err(malformed());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| malformed())?;
        serde_json::from_slice(&bytes).map_err(|_| malformed())
    }

    /// A connections cursor: the provider and the id to go on after.
    pub fn connections(self) -> Result<(String, Option<ConnectionId>), String> {
        match self {
            Cursor::Connections { provider, after } if after.is_empty() => Ok((provider, None)),
            Cursor::Connections { provider, after } => {
                let id = ConnectionId::parse(&after).map_err(|e| e.to_string())?;
                Ok((provider, Some(id)))
            }
            Cursor::Changes { .. } => Err("a cursor of record changes, not of connections".to_owned()),
        }
    }

    /// A changes cursor of `job`: the place to go on after (`None`: from the start).
    pub fn changes(self, job: &str) -> Result<ChangePlace, String> {
        match self {
            Cursor::Changes { job: of, seq, id } if of == job => Ok(ChangePlace { seq, id }),
            Cursor::Changes { .. } => Err("the cursor belongs to another connection's or sync's changes".to_owned()),
            Cursor::Connections { .. } => Err("a cursor of connections, not of record changes".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_what_it_did_not_make() {
        let cursor = Cursor::Changes {
            job: "c1#projects".to_owned(),
            seq: 42,
            id: "a|b".to_owned(),
        };
        let text = cursor.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            Cursor::decode(&text).and_then(|c| c.changes("c1#projects")),
            Ok(ChangePlace {
                seq: 42,
                id: "a|b".to_owned()
            })
        );
        assert!(Cursor::decode(&text).and_then(|c| c.changes("c2#projects")).is_err());
        assert!(Cursor::decode(&text).and_then(Cursor::connections).is_err());
        for bad in ["", "%%%", "eyJrIjoieCJ9", &"A".repeat(5000)] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }
}
