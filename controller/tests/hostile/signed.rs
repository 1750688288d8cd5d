//! Signed requests (OVHcloud's credentials) under attack: a request seen
//! on the wire replayed with another body, to another path, or from
//! another host; stale timestamps; another application's consumer key;
//! rules that do not grant the call; requested consumer keys used before
//! validation, validated with a wrong token, or requested by the thousand.

use byoi_controller::auth::signature;
use byoi_controller::db::now;
use serde_json::{json, Value};

use crate::common::{request, Controller, Response, ATTACKER, OPERATOR};

/// An application's key and secret and a consumer key.
struct Keys {
    application: String,
    secret: String,
    consumer: String,
}

/// Makes an application and a consumer key with `extra` fields
/// (`rules`, `allowedIPs`) through the API.
fn keys(c: &Controller, name: &str, extra: Value) -> Keys {
    let mut body = json!({"name": name});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let r = c.api("POST", "/me/api/application", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    Keys { application: field("applicationKey"), secret: field("applicationSecret"), consumer: field("consumerKey") }
}

/// The headers of a request signed as the SDK signs it, for `path` on
/// `c` with `body`, at `now + skew` seconds.
fn sign(c: &Controller, k: &Keys, method: &str, path: &str, body: &str, skew: i64) -> Vec<(String, String)> {
    let ts = (now() + skew).to_string();
    let url = format!("http://{}{path}", c.addr);
    let sig = signature(&k.secret, &k.consumer, method, &url, body.as_bytes(), &ts);
    vec![
        ("X-Ovh-Application".into(), k.application.clone()),
        ("X-Ovh-Consumer".into(), k.consumer.clone()),
        ("X-Ovh-Timestamp".into(), ts),
        ("X-Ovh-Signature".into(), sig),
    ]
}

/// Sends `method path` from `from` with `headers` and `body`.
fn send(
    c: &Controller,
    from: std::net::IpAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Response {
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    request(from, c.addr, method, path, &h, (!body.is_empty()).then_some(body.as_bytes()))
}

fn error_code(r: &Response) -> String {
    r.json()["errorCode"].as_str().unwrap_or_default().to_owned()
}

/// A controller with s1 registered.
fn controller() -> Controller {
    let c = Controller::start(&[]);
    let r = c.api("POST", "/dedicated/server", Some(&json!({"serviceName": "s1", "macs": ["52:54:00:00:00:01"]})));
    assert_eq!(r.status, 201, "{}", r.text());
    c
}

const BYOI: &str = "/1.0/dedicated/server/s1/bringYourOwnImage";

#[test]
fn a_signed_request_seen_on_the_wire_cannot_be_bent() {
    let c = controller();
    let k = keys(&c, "ops", json!({}));
    let body = json!({"URL": "https://img.example/a.raw", "type": "raw"}).to_string();
    let seen = sign(&c, &k, "POST", BYOI, &body, 0);
    // Another body under the same headers.
    let evil = json!({"URL": "https://evil.example/a.raw", "type": "raw"}).to_string();
    let r = send(&c, ATTACKER, "POST", BYOI, &seen, &evil);
    assert_eq!((r.status, error_code(&r)), (400, "INVALID_SIGNATURE".into()), "{}", r.text());
    // Another path, another method.
    let r = send(&c, ATTACKER, "POST", "/1.0/dedicated/server/s2/bringYourOwnImage", &seen, &body);
    assert_eq!((r.status, error_code(&r)), (400, "INVALID_SIGNATURE".into()), "{}", r.text());
    let r = send(&c, ATTACKER, "DELETE", BYOI, &seen, "");
    assert_eq!((r.status, error_code(&r)), (400, "INVALID_SIGNATURE".into()), "{}", r.text());
    // The path without /1.0 is another URL.
    let r = send(&c, ATTACKER, "POST", "/dedicated/server/s1/bringYourOwnImage", &seen, &body);
    assert_eq!((r.status, error_code(&r)), (400, "INVALID_SIGNATURE".into()), "{}", r.text());
    // Nothing was deployed by any of them.
    assert_eq!(c.api("GET", "/dedicated/server/s1/bringYourOwnImage", None).status, 404);
    // The request itself goes through, within its window, as often as the
    // SDK repeats it (OVHcloud does not refuse identical requests).
    let r = send(&c, OPERATOR, "POST", BYOI, &seen, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let get = sign(&c, &k, "GET", BYOI, "", 0);
    for _ in 0..2 {
        assert_eq!(send(&c, OPERATOR, "GET", BYOI, &get, "").status, 200);
    }
}

#[test]
fn timestamps_outside_the_window_are_refused_even_well_signed() {
    let c = controller();
    let k = keys(&c, "ops", json!({}));
    for skew in [-600, 600] {
        let h = sign(&c, &k, "GET", "/1.0/dedicated/server", "", skew);
        let r = send(&c, OPERATOR, "GET", "/1.0/dedicated/server", &h, "");
        assert_eq!((r.status, error_code(&r)), (400, "QUERY_TIME_OUT".into()), "{skew}: {}", r.text());
    }
    let h = sign(&c, &k, "GET", "/1.0/dedicated/server", "", -60);
    assert_eq!(send(&c, OPERATOR, "GET", "/1.0/dedicated/server", &h, "").status, 200);
}

#[test]
fn a_consumer_key_works_only_with_its_application_and_from_its_networks() {
    let c = controller();
    let home = keys(&c, "home", json!({"allowedIPs": ["127.0.0.1/32"]}));
    let other = keys(&c, "other", json!({}));
    let path = "/1.0/dedicated/server";
    let h = sign(&c, &home, "GET", path, "", 0);
    assert_eq!(send(&c, OPERATOR, "GET", path, &h, "").status, 200);
    // Well signed, from another host.
    let r = send(&c, ATTACKER, "GET", path, &h, "");
    assert_eq!((r.status, error_code(&r)), (403, "INVALID_CREDENTIAL".into()), "{}", r.text());
    assert_eq!(r.json()["message"], "This credential is not valid");
    // Home's consumer key under the other application, signed with its
    // secret.
    let mixed = Keys { consumer: home.consumer.clone(), ..other };
    let r = send(&c, OPERATOR, "GET", path, &sign(&c, &mixed, "GET", path, "", 0), "");
    assert_eq!((r.status, error_code(&r)), (403, "INVALID_CREDENTIAL".into()), "{}", r.text());
    assert_eq!(r.json()["message"], "This credential does not exist");
}

#[test]
fn rules_grant_only_what_they_name() {
    let c = controller();
    let k = keys(&c, "reader", json!({"rules": [{"method": "GET", "path": "/dedicated/server/*"}]}));
    let get = |path: &str| send(&c, OPERATOR, "GET", path, &sign(&c, &k, "GET", path, "", 0), "");
    assert_eq!(get("/1.0/dedicated/server/s1").status, 200);
    assert_eq!(get("/dedicated/server/s1").status, 200, "the rules name paths without /1.0");
    let r = get("/1.0/dedicated/server");
    assert_eq!((r.status, error_code(&r)), (403, "NOT_GRANTED_CALL".into()), "{}", r.text());
    let body = json!({"URL": "https://img.example/a.raw"}).to_string();
    let r = send(&c, OPERATOR, "POST", BYOI, &sign(&c, &k, "POST", BYOI, &body, 0), &body);
    assert_eq!((r.status, error_code(&r)), (403, "NOT_GRANTED_CALL".into()), "{}", r.text());
    // A rule is checked after the signature: a forged request learns
    // nothing of what the credential may do.
    let forged = Keys { secret: "guess".into(), ..k };
    let r = send(&c, OPERATOR, "POST", BYOI, &sign(&c, &forged, "POST", BYOI, &body, 0), &body);
    assert_eq!((r.status, error_code(&r)), (400, "INVALID_SIGNATURE".into()), "{}", r.text());
    // Managing credentials takes the API token, whatever the rules.
    let admin = keys(&c, "admin", json!({}));
    let path = "/1.0/me/api/application";
    let body = json!({"name": "escalated"}).to_string();
    let r = send(&c, OPERATOR, "POST", path, &sign(&c, &admin, "POST", path, &body, 0), &body);
    assert_eq!((r.status, error_code(&r)), (403, "NOT_GRANTED_CALL".into()), "{}", r.text());
}

#[test]
fn an_unknown_application_is_refused_before_its_body_is_read() {
    let c = controller();
    let mut s = crate::common::connect(ATTACKER, c.addr).unwrap();
    let head = format!(
        "POST {BYOI} HTTP/1.1\r\nHost: {}\r\nX-Ovh-Application: nope\r\nX-Ovh-Consumer: x\r\nX-Ovh-Timestamp: 1\r\n\
         X-Ovh-Signature: $1$x\r\nContent-Type: application/json\r\nContent-Length: 20000000\r\n\r\n",
        c.addr
    );
    std::io::Write::write_all(&mut s, head.as_bytes()).unwrap();
    let r = crate::common::read_response(&mut s).unwrap();
    assert_eq!((r.status, error_code(&r)), (403, "INVALID_KEY".into()), "{}", r.text());
}

/// `POST /auth/credential` for `k`'s application, asking for `rules`.
fn ask(c: &Controller, k: &Keys, rules: Value, redirection: Option<&str>) -> Response {
    let body = json!({"accessRules": rules, "redirection": redirection, "allowedIPs": null}).to_string();
    send(c, ATTACKER, "POST", "/1.0/auth/credential", &[("X-Ovh-Application".into(), k.application.clone())], &body)
}

#[test]
fn requested_consumer_keys_wait_for_the_operator() {
    let c = controller();
    let app = keys(&c, "app", json!({}));
    let evil = r#"/x"><script>alert(1)</script>"#;
    let r =
        ask(&c, &app, json!([{"method": "GET", "path": "/dedicated/server/*"}, {"method": "GET", "path": evil}]), None);
    assert_eq!(r.status, 200, "{}", r.text());
    let requested = Keys { consumer: r.json()["consumerKey"].as_str().unwrap().to_owned(), ..app };
    let url = r.json()["validationUrl"].as_str().unwrap().to_owned();
    let token = url.split_once("credentialToken=").unwrap().1.to_owned();
    let path = "/1.0/dedicated/server/s1";
    let use_it = || send(&c, ATTACKER, "GET", path, &sign(&c, &requested, "GET", path, "", 0), "");
    let r = use_it();
    assert_eq!((r.status, error_code(&r)), (403, "INVALID_CREDENTIAL".into()), "{}", r.text());
    // The page shows what is asked, escaped.
    let page = request(ATTACKER, c.addr, "GET", &format!("/auth/validate?credentialToken={token}"), &[], None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("&lt;script&gt;") && !page.text().contains("<script>"), "{}", page.text());
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    // A wrong API token changes nothing; the right one validates, once.
    let form = |api: &str| format!("credentialToken={token}&apiToken={api}&action=validate");
    let post = |body: String| {
        let h = [("Content-Type", "application/x-www-form-urlencoded")];
        request(ATTACKER, c.addr, "POST", "/auth/validate", &h, Some(body.as_bytes()))
    };
    assert_eq!(post(form("guess")).status, 403);
    assert_eq!(use_it().status, 403);
    assert_eq!(post(form(&c.token)).status, 200);
    assert_eq!(use_it().status, 200);
    assert_eq!(post(form(&c.token)).status, 404, "a validation link is used once");
    // Unknown tokens get the same page as used ones.
    let r = request(ATTACKER, c.addr, "GET", "/auth/validate?credentialToken=guess", &[], None);
    assert_eq!(r.status, 404);
}

#[test]
fn a_validated_request_goes_on_to_its_redirection() {
    let c = controller();
    let app = keys(&c, "app", json!({}));
    let r = ask(&c, &app, json!([{"method": "GET", "path": "/*"}]), Some("https://app.example/done"));
    let url = r.json()["validationUrl"].as_str().unwrap().to_owned();
    let token = url.split_once("credentialToken=").unwrap().1;
    let body = format!("credentialToken={token}&apiToken={}&action=validate", c.token);
    let h = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = request(OPERATOR, c.addr, "POST", "/1.0/auth/validate", &h, Some(body.as_bytes()));
    assert_eq!((r.status, r.header("location")), (303, Some("https://app.example/done")));
    let r = ask(&c, &app, json!([{"method": "GET", "path": "/*"}]), Some("javascript:alert(1)"));
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn an_application_key_cannot_flood_the_controller_with_requests() {
    let c = controller();
    let app = keys(&c, "app", json!({}));
    let rules = json!([{"method": "GET", "path": "/*"}]);
    for i in 0..byoi_controller::auth::MAX_PENDING {
        assert_eq!(ask(&c, &app, rules.clone(), None).status, 200, "request {i}");
    }
    let r = ask(&c, &app, rules.clone(), None);
    assert_eq!(r.status, 409, "{}", r.text());
    let too_many: Vec<Value> = (0..=byoi_controller::auth::MAX_RULES).map(|_| rules[0].clone()).collect();
    let other = keys(&c, "other", json!({}));
    assert_eq!(ask(&c, &other, Value::Array(too_many), None).status, 400);
    assert_eq!(ask(&c, &other, json!([]), None).status, 400);
    let unknown = Keys { application: "nope".into(), secret: String::new(), consumer: String::new() };
    let r = ask(&c, &unknown, rules, None);
    assert_eq!((r.status, error_code(&r)), (403, "INVALID_KEY".into()), "{}", r.text());
}
