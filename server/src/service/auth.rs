//! Who a Flight call comes from and which workspaces it may see: configured
//! bearer tokens, and session tokens that a basic-auth handshake issues.

use std::collections::HashMap;

use base64::Engine as _;
use parking_lot::Mutex;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::config::AuthConfig;

/// What a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every workspace.
    All,
    /// These workspaces.
    Only(Vec<String>),
}

impl Grant {
    fn from_names(names: &[String]) -> Self {
        if names.iter().any(|n| n == "*") {
            Grant::All
        } else {
            Grant::Only(names.to_vec())
        }
    }

    /// Whether workspace `name` is granted.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Only(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The Flight port's gatekeeper.
#[derive(Debug)]
pub struct Auth {
    /// No tokens and no users configured: everyone sees everything.
    open: bool,
    tokens: HashMap<String, Grant>,
    users: HashMap<String, (String, Grant)>,
    /// Tokens issued by handshakes (kept until the server stops).
    sessions: Mutex<HashMap<String, Grant>>,
}

/// Largest number of handshake sessions kept; the oldest are not tracked,
/// so past this all are dropped and clients handshake again.
const MAX_SESSIONS: usize = 100_000;

impl Auth {
    /// From the `[auth]` section.
    pub fn new(cfg: &AuthConfig) -> Self {
        Auth {
            open: cfg.tokens.is_empty() && cfg.users.is_empty(),
            tokens: cfg
                .tokens
                .iter()
                .map(|t| (t.token.clone(), Grant::from_names(&t.workspaces)))
                .collect(),
            users: cfg
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        (u.password.clone(), Grant::from_names(&u.workspaces)),
                    )
                })
                .collect(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn header(md: &MetadataMap) -> Result<Option<&str>, Status> {
        md.get("authorization")
            .map(|v| {
                v.to_str()
                    .map_err(|_| Status::unauthenticated("authorization: not ASCII"))
            })
            .transpose()
    }

    fn bearer(&self, token: &str) -> Option<Grant> {
        self.tokens
            .get(token)
            .cloned()
            .or_else(|| self.sessions.lock().get(token).cloned())
    }

    /// The grant of a call from its `authorization` header.
    pub fn grant(&self, md: &MetadataMap) -> Result<Grant, Status> {
        if self.open {
            return Ok(Grant::All);
        }
        let Some(h) = Self::header(md)? else {
            return Err(Status::unauthenticated(
                "authorization: missing; send `Bearer <token>` or handshake with basic auth first",
            ));
        };
        match h.strip_prefix("Bearer ") {
            Some(token) => self
                .bearer(token.trim())
                .ok_or_else(|| Status::unauthenticated("authorization: unknown bearer token")),
            None => Err(Status::unauthenticated(
                "authorization: expected `Bearer <token>` (basic auth goes to the handshake)",
            )),
        }
    }

    /// A handshake: basic credentials get a fresh session token; a bearer
    /// token is checked and returned. `None`: nothing to return (an open
    /// server and no credentials).
    pub fn handshake(&self, md: &MetadataMap) -> Result<Option<String>, Status> {
        let header = Self::header(md)?;
        if let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) {
            let token = token.trim();
            if self.open || self.bearer(token).is_some() {
                return Ok(Some(token.to_string()));
            }
            return Err(Status::unauthenticated(
                "authorization: unknown bearer token",
            ));
        }
        let basic = match header.and_then(|h| h.strip_prefix("Basic ")) {
            Some(b) => b.trim(),
            None if self.open => return Ok(None),
            None => {
                return Err(Status::unauthenticated(
                    "handshake: send `authorization: Basic <base64 user:password>`",
                ));
            }
        };
        // Padded (RFC 7617) or not (Go's Flight client sends it unpadded).
        const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = B64
            .decode(basic)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "authorization: basic credentials are not base64 of user:password",
                )
            })?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| {
            Status::unauthenticated("authorization: basic credentials are not user:password")
        })?;
        let grant = if self.open {
            Grant::All
        } else {
            match self.users.get(user) {
                Some((p, g)) if p == password => g.clone(),
                _ => {
                    return Err(Status::unauthenticated(format!(
                        "handshake: wrong user name or password for `{user}`"
                    )));
                }
            }
        };
        let token = format!("{:032x}", rand::random::<u128>());
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS {
            sessions.clear();
        }
        sessions.insert(token.clone(), grant);
        Ok(Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{TokenGrant, UserGrant};

    fn md(auth: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", auth.parse().unwrap());
        m
    }

    #[test]
    fn tokens_users_and_handshakes() {
        let open = Auth::new(&AuthConfig::default());
        assert_eq!(open.grant(&MetadataMap::new()).unwrap(), Grant::All);

        let auth = Auth::new(&AuthConfig {
            tokens: vec![TokenGrant {
                token: "t1".into(),
                workspaces: vec!["shop".into()],
            }],
            users: vec![UserGrant {
                name: "bi".into(),
                password: "pw".into(),
                workspaces: vec!["*".into()],
            }],
        });
        let e = auth.grant(&MetadataMap::new()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            auth.grant(&md("Bearer t1")).unwrap(),
            Grant::Only(vec!["shop".into()])
        );
        assert!(auth.grant(&md("Bearer nope")).is_err());

        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let token = auth.handshake(&md(&basic("bi:pw"))).unwrap().unwrap();
        assert_eq!(
            auth.grant(&md(&format!("Bearer {token}"))).unwrap(),
            Grant::All
        );
        let unpadded = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode("bi:pw")
        );
        assert!(auth.handshake(&md(&unpadded)).unwrap().is_some());
        let e = auth.handshake(&md(&basic("bi:wrong"))).unwrap_err();
        assert!(e.message().contains("`bi`"), "{e}");
        assert!(auth.handshake(&MetadataMap::new()).is_err());
        assert!(!Grant::Only(vec!["shop".into()]).allows("other"));
    }
}
