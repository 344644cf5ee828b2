//! `quiver resolve`, `quiver person`, `quiver explain`, `quiver rules`: the
//! IdentityService from the command line.

use futures::StreamExt;
use quiver_proto::v1 as pb;
use quiver_proto::v1::identity_service_client::IdentityServiceClient;
use tonic::transport::Channel;

use super::{output, status_error};

/// Splits `kind:value` (`phone:+8613800138000`, `openid:wx1:o123`).
pub fn parse_identifier(s: &str) -> anyhow::Result<pb::Identifier> {
    match s.split_once(':') {
        Some((kind, value)) if !kind.is_empty() && !value.is_empty() => Ok(pb::Identifier {
            kind: kind.to_string(),
            value: value.to_string(),
        }),
        _ => {
            anyhow::bail!("`{s}` is not an identifier: write it as kind:value (phone:13800138000)")
        }
    }
}

/// Runs a resolve, showing progress on stderr; returns the final report.
pub async fn resolve(
    channel: Channel,
    workspace: &str,
    dry_run: bool,
    full: bool,
    rules_toml: String,
    quiet: bool,
) -> anyhow::Result<pb::ResolveReport> {
    let mut client = IdentityServiceClient::new(channel);
    let mut stream = client
        .resolve(pb::ResolveRequest {
            workspace: workspace.into(),
            dry_run,
            full,
            rules_toml,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let bar = output::progress(0, "events read", quiet);
    while let Some(msg) = stream.next().await {
        match msg.map_err(status_error)?.update {
            Some(pb::resolve_update::Update::Progress(p)) => {
                if p.phase == "read" {
                    bar.set_position(p.done);
                } else {
                    bar.set_message(p.phase);
                }
            }
            Some(pb::resolve_update::Update::Report(r)) => {
                bar.finish_and_clear();
                return Ok(r);
            }
            None => {}
        }
    }
    bar.finish_and_clear();
    anyhow::bail!("the server ended the resolve stream without a report")
}

/// Looks a person up by `kind:value` or by person id.
pub async fn person(channel: Channel, workspace: &str, key: &str) -> anyhow::Result<pb::Person> {
    let key = if key.contains(':') {
        pb::get_person_request::Key::Identifier(parse_identifier(key)?)
    } else {
        pb::get_person_request::Key::PersonId(key.to_string())
    };
    let mut client = IdentityServiceClient::new(channel);
    Ok(client
        .get_person(pb::GetPersonRequest {
            workspace: workspace.into(),
            key: Some(key),
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

/// Explains two identifiers.
pub async fn explain(
    channel: Channel,
    workspace: &str,
    a: &str,
    b: &str,
) -> anyhow::Result<pb::Explanation> {
    let mut client = IdentityServiceClient::new(channel);
    Ok(client
        .explain(pb::ExplainRequest {
            workspace: workspace.into(),
            a: Some(parse_identifier(a)?),
            b: Some(parse_identifier(b)?),
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

/// The workspace's rules as TOML.
pub async fn rules(channel: Channel, workspace: &str) -> anyhow::Result<String> {
    let mut client = IdentityServiceClient::new(channel);
    Ok(client
        .get_rules(pb::GetRulesRequest {
            workspace: workspace.into(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .toml)
}
