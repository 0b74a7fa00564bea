//! `runnel iam …` and `runnel projects …`, and the read-modify-write of IAM policies that
//! every `add-iam-policy-binding` shares.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cli::{AccountsCmd, Binding, IamCmd, ProjectsCmd};
use crate::client::{Client, is_aborted};
use crate::output::{Column, Format, print_list, print_value, s};

/// How often a read-modify-write starts over before giving up. With N writers at once, one
/// can be overtaken N-1 times, so this is generous; the jittered backoff spreads them out.
const POLICY_ATTEMPTS: u32 = 30;

/// Reads the policy, lets `change` edit it, and writes it back with the etag it was read
/// with; when someone else changed it meanwhile (ABORTED), starts over, as gcloud does.
async fn modify_policy(
    client: &Client,
    get_path: &str,
    set_path: &str,
    change: impl Fn(&mut Value) -> Result<()>,
) -> Result<Value> {
    use rand::Rng;
    let mut attempt = 0;
    loop {
        let mut policy = client.post(get_path, &json!({})).await?;
        change(&mut policy)?;
        match client.post(set_path, &json!({ "policy": policy })).await {
            Ok(p) => return Ok(p),
            Err(e) if is_aborted(&e) && attempt + 1 < POLICY_ATTEMPTS => {
                attempt += 1;
                let ceiling = (10u64 << attempt.min(5)).min(250);
                let wait = rand::rng().random_range(ceiling / 2..=ceiling);
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub async fn add_binding(client: &Client, get_path: &str, set_path: &str, member: &str, role: &str) -> Result<Value> {
    modify_policy(client, get_path, set_path, |p| {
        let bindings = p.as_object_mut().map(|o| o.entry("bindings").or_insert_with(|| json!([])));
        let Some(Value::Array(bindings)) = bindings else {
            bail!("the policy returned by the API has no bindings list")
        };
        match bindings.iter_mut().find(|b| b["role"] == role) {
            Some(b) => {
                if let Some(members) = b["members"].as_array_mut()
                    && !members.iter().any(|m| m == member)
                {
                    members.push(json!(member));
                }
            }
            None => bindings.push(json!({ "role": role, "members": [member] })),
        }
        Ok(())
    })
    .await
}

/// Removes a member from a role. With `quiet_if_absent`, an absent binding is not an error.
pub async fn remove_binding(
    client: &Client,
    get_path: &str,
    set_path: &str,
    member: &str,
    role: &str,
    quiet_if_absent: bool,
) -> Result<Value> {
    modify_policy(client, get_path, set_path, |p| {
        let mut found = false;
        if let Some(bindings) = p.get_mut("bindings").and_then(Value::as_array_mut) {
            for b in bindings.iter_mut().filter(|b| b["role"] == role) {
                if let Some(members) = b["members"].as_array_mut() {
                    let before = members.len();
                    members.retain(|m| m != member);
                    found |= members.len() != before;
                }
            }
            bindings.retain(|b| b["members"].as_array().is_some_and(|m| !m.is_empty()));
        }
        if !found && !quiet_if_absent {
            bail!("the policy has no binding of `{member}` to `{role}`; see the current policy with `get-iam-policy`");
        }
        Ok(())
    })
    .await
}

pub async fn set_policy_from_file(client: &Client, set_path: &str, file: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read policy file {}", file.display()))?;
    let policy: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) => {
            serde_yaml_ng::from_str(&text).with_context(|| format!("{} is neither JSON nor YAML", file.display()))?
        }
    };
    client.post(set_path, &json!({ "policy": policy })).await
}

pub fn print_policy(format: Format, p: &Value) -> Result<()> {
    print_value(format, p)
}

fn check_condition(b: &Binding) -> Result<()> {
    if b.condition.is_some() {
        bail!(
            "IAM conditions are not supported by runnel yet; it refuses rather than grant more than you meant. Drop `--condition`"
        );
    }
    Ok(())
}

fn account_path(client: &Client, account: &str) -> String {
    let email = if account.contains('@') || account.bytes().all(|b| b.is_ascii_digit()) {
        account.to_string()
    } else {
        format!("{account}@{}.iam.gserviceaccount.com", client.project)
    };
    format!("/v1/projects/{}/serviceAccounts/{email}", client.project)
}

pub async fn iam(client: &Client, format: Format, cmd: IamCmd) -> Result<()> {
    let IamCmd::ServiceAccounts(cmd) = cmd;
    match cmd {
        AccountsCmd::Create { name, display_name, description } => {
            let body = json!({
                "accountId": name,
                "serviceAccount": { "displayName": display_name.unwrap_or_default(), "description": description.unwrap_or_default() }
            });
            let a = client.post(&format!("/v1/projects/{}/serviceAccounts", client.project), &body).await?;
            eprintln!("Created service account [{name}].");
            if format != Format::Table {
                print_value(format, &a)?;
            } else {
                println!("{}", s(&a["email"]));
            }
            Ok(())
        }
        AccountsCmd::List => {
            let v = client.get(&format!("/v1/projects/{}/serviceAccounts", client.project)).await?;
            let items = v["accounts"].as_array().cloned().unwrap_or_default();
            let columns = vec![
                Column { header: "DISPLAY NAME", cell: |v| s(&v["displayName"]) },
                Column { header: "EMAIL", cell: |v| s(&v["email"]) },
                Column { header: "UNIQUE ID", cell: |v| s(&v["uniqueId"]) },
                Column {
                    header: "DISABLED",
                    cell: |v| if v["disabled"] == true { "True".into() } else { "False".into() },
                },
            ];
            print_list(format, &items, &columns)
        }
        AccountsCmd::Describe { account } => print_value(format, &client.get(&account_path(client, &account)).await?),
        AccountsCmd::Delete { account } => {
            client.delete(&account_path(client, &account)).await?;
            eprintln!("deleted service account [{account}]");
            Ok(())
        }
        AccountsCmd::Disable { account } => {
            client.post(&format!("{}:disable", account_path(client, &account)), &json!({})).await?;
            eprintln!("Disabled service account [{account}].");
            Ok(())
        }
        AccountsCmd::Enable { account } => {
            client.post(&format!("{}:enable", account_path(client, &account)), &json!({})).await?;
            eprintln!("Enabled service account [{account}].");
            Ok(())
        }
        AccountsCmd::GetIamPolicy { account } => print_value(
            format,
            &client.post(&format!("{}:getIamPolicy", account_path(client, &account)), &json!({})).await?,
        ),
        AccountsCmd::AddIamPolicyBinding { account, binding } => {
            check_condition(&binding)?;
            let path = account_path(client, &account);
            let p = add_binding(
                client,
                &format!("{path}:getIamPolicy"),
                &format!("{path}:setIamPolicy"),
                &binding.member,
                &binding.role,
            )
            .await?;
            eprintln!("Updated IAM policy for serviceAccount [{account}].");
            print_policy(format, &p)
        }
        AccountsCmd::RemoveIamPolicyBinding { account, binding } => {
            let path = account_path(client, &account);
            let p = remove_binding(
                client,
                &format!("{path}:getIamPolicy"),
                &format!("{path}:setIamPolicy"),
                &binding.member,
                &binding.role,
                false,
            )
            .await?;
            eprintln!("Updated IAM policy for serviceAccount [{account}].");
            print_policy(format, &p)
        }
    }
}

pub async fn projects(client: &Client, format: Format, cmd: ProjectsCmd) -> Result<()> {
    match cmd {
        ProjectsCmd::GetIamPolicy { project } => {
            print_value(format, &client.post(&format!("/v1/projects/{project}:getIamPolicy"), &json!({})).await?)
        }
        ProjectsCmd::AddIamPolicyBinding { project, binding } => {
            check_condition(&binding)?;
            let p = add_binding(
                client,
                &format!("/v1/projects/{project}:getIamPolicy"),
                &format!("/v1/projects/{project}:setIamPolicy"),
                &binding.member,
                &binding.role,
            )
            .await?;
            eprintln!("Updated IAM policy for project [{project}].");
            print_policy(format, &p)
        }
        ProjectsCmd::RemoveIamPolicyBinding { project, binding } => {
            let p = remove_binding(
                client,
                &format!("/v1/projects/{project}:getIamPolicy"),
                &format!("/v1/projects/{project}:setIamPolicy"),
                &binding.member,
                &binding.role,
                false,
            )
            .await?;
            eprintln!("Updated IAM policy for project [{project}].");
            print_policy(format, &p)
        }
    }
}
