//! A local Amazon Connect, as much of it as the contact-event processor uses: DescribeUser
//! (`GET /users/{InstanceId}/{UserId}`, REST-JSON) over users registered by tests and the demo.
//! moto's Connect has no users.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::http::{Body, Server, aws_error, json as json_response, percent_decode, serve};
use crate::lock;

/// An agent's user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id (the last part of the agent ARN).
    pub id: String,
    /// Login name.
    pub username: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
}

/// The local Connect: register users, then [`Connect::serve`].
#[derive(Debug, Clone, Default)]
pub struct Connect {
    users: Arc<Mutex<BTreeMap<(String, String), User>>>,
    region: String,
    account: String,
}

impl Connect {
    /// A Connect with no users (ARNs in `region` and `account`).
    pub fn new(region: &str, account: &str) -> Self {
        Self {
            users: Arc::default(),
            region: region.to_string(),
            account: account.to_string(),
        }
    }

    /// Registers `user` in instance `instance_id`; returns its agent ARN (as contact events
    /// name the agent).
    pub fn add_user(&self, instance_id: &str, user: User) -> String {
        let arn = self.user_arn(instance_id, &user.id);
        lock(&self.users).insert((instance_id.to_string(), user.id.clone()), user);
        arn
    }

    fn user_arn(&self, instance_id: &str, user_id: &str) -> String {
        format!(
            "arn:aws:connect:{}:{}:instance/{instance_id}/agent/{user_id}",
            self.region, self.account
        )
    }

    /// Serves on `127.0.0.1:port` (0: any free port).
    pub async fn serve(&self, port: u16) -> std::io::Result<Server> {
        let connect = self.clone();
        serve(port, move |request| {
            let connect = connect.clone();
            async move { connect.handle(request) }
        })
        .await
    }

    fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (request.method(), parts.as_slice()) {
            (&Method::GET, ["users", instance, user]) => {
                let instance = percent_decode(instance);
                let user = percent_decode(user);
                // Connect accepts a user's id; its ARN ends in the id.
                let user_id = user.rsplit('/').next().unwrap_or(&user).to_string();
                let found = lock(&self.users)
                    .get(&(instance.clone(), user_id.clone()))
                    .cloned();
                match found {
                    Some(u) => json_response(&json!({"User": {
                        "Id": u.id,
                        "Arn": self.user_arn(&instance, &u.id),
                        "Username": u.username,
                        "IdentityInfo": {"FirstName": u.first_name, "LastName": u.last_name},
                        "SecurityProfileIds": [],
                        "RoutingProfileId": "local",
                        "Tags": {}
                    }})),
                    None => aws_error(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFoundException",
                        &format!("User {user_id} not found in instance {instance}"),
                    ),
                }
            }
            _ => aws_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                &format!(
                    "{} {path} is not an operation of the local Connect",
                    request.method()
                ),
            ),
        }
    }
}
