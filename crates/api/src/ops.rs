//! Long-running operations. runnel applies every mutation before it answers, so each
//! operation is returned already `done`, in the shape the matching Google API uses; clients
//! that poll get the answer on the first look.

use serde::Serialize;
use serde_json::{Value, json};

use crate::plane::{new_uid, now};

/// A `google.longrunning.Operation` (Cloud Run v2, VPC Access v1), done, with its result.
pub(crate) fn done<T: Serialize>(project: &str, location: &str, type_url: &str, result: &T) -> Value {
    let mut response = serde_json::to_value(result).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut response {
        map.insert("@type".into(), Value::String(type_url.to_string()));
    }
    json!({
        "name": format!("projects/{project}/locations/{location}/operations/{}", new_uid()),
        "metadata": response.clone(),
        "done": true,
        "response": response,
    })
}

/// A Compute Engine operation, done.
pub(crate) fn compute_done(
    project: &str,
    kind: &str,
    target_link: &str,
    target_id: &str,
    region: Option<&str>,
) -> Value {
    let id = new_uid();
    let t = now();
    let mut op = json!({
        "kind": "compute#operation",
        "id": id,
        "name": format!("operation-{id}"),
        "operationType": kind,
        "targetLink": target_link,
        "targetId": target_id,
        "status": "DONE",
        "progress": 100,
        "insertTime": t,
        "startTime": t,
        "endTime": t,
    });
    let scope = match region {
        Some(r) => format!("projects/{project}/regions/{r}"),
        None => format!("projects/{project}/global"),
    };
    if let (Value::Object(map), Some(r)) = (&mut op, region) {
        map.insert("region".into(), Value::String(format!("projects/{project}/regions/{r}")));
    }
    if let Value::Object(map) = &mut op {
        map.insert("selfLink".into(), Value::String(format!("{scope}/operations/operation-{id}")));
    }
    op
}
