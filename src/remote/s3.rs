//! The remote cache on S3 or an S3-compatible server (MinIO, SeaweedFS, Ceph…), in a few
//! blocking HTTP requests: rusty-s3 signs them (SigV4 presigned URLs) and parses the XML
//! answers, ureq sends them (rustls with ring, connections pooled by one agent shared by
//! the transfer threads).
//!
//! Settings: `[remote]` `endpoint` (else `AWS_ENDPOINT_URL`, `AWS_ENDPOINT`; path-style
//! requests when there is one, else AWS itself), `region` (else `AWS_REGION`,
//! `AWS_DEFAULT_REGION`, else us-east-1), `allow_http`; credentials only from
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.

use super::{Store, explain};
use crate::spec::RawRemote;
use anyhow::{Result, anyhow};
use rusty_s3::actions::{
    CompleteMultipartUploadResponse, CreateMultipartUpload, ListObjectsV2, S3Action,
};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use ureq::http::{Response, StatusCode};

/// How long a signed request stays valid; each attempt is signed anew just before it is sent.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Attempts after the first, on a connection error or a 5xx answer.
const RETRIES: u32 = 2;
/// Parts of a multipart upload uploaded at once (each holds one part in memory).
const PART_THREADS: usize = 4;
/// The smallest part (S3 wants at least 5 MiB but the last).
const MIN_PART: u64 = 8 << 20;
/// S3 allows at most this many parts.
const MAX_PARTS: u64 = 10_000;

/// One multipart upload under way.
struct Upload<'a> {
    key: &'a str,
    id: &'a str,
    file: std::fs::File,
    local: &'a Path,
    size: u64,
    part: u64,
    count: usize,
}

pub(super) struct S3Store {
    /// The `[remote]` url, for messages.
    url: String,
    bucket: Bucket,
    /// The credentials, or why no request can be made (said by every request, so that
    /// `build --pull` warns and builds locally as for any other remote failure).
    ready: std::result::Result<Credentials, String>,
    agent: ureq::Agent,
}

/// Whether `bucket` can be a host name label (`<bucket>.s3.<region>.amazonaws.com`); a name
/// with dots or capitals goes in the path instead (dots would not match AWS's certificate).
fn dns_safe(bucket: &str) -> bool {
    !bucket.is_empty()
        && bucket.len() <= 63
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !bucket.starts_with('-')
        && !bucket.ends_with('-')
}

/// A key as object_store wrote it, so that a remote filled before pipe had its own S3 client
/// still serves: each `/`-separated part percent-encoded where AWS advises against the
/// character (and non-ASCII bytes), `.` and `..` as `%2E` and `%2E%2E`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, part) in key.split('/').filter(|p| !p.is_empty()).enumerate() {
        if i > 0 {
            out.push('/');
        }
        match part {
            "." => out.push_str("%2E"),
            ".." => out.push_str("%2E%2E"),
            _ => {
                for &b in part.as_bytes() {
                    if b.is_ascii_control() || !b.is_ascii() || br#"\{^}%`]">[~<#|*?"#.contains(&b)
                    {
                        out.push_str(&format!("%{b:02X}"));
                    } else {
                        out.push(b as char);
                    }
                }
            }
        }
    }
    out
}

/// The inverse of [`encode_key`] for one listed name.
fn decode_name(name: &str) -> String {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The text of the first `<tag>…</tag>` in `xml`, unescaped.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    let text = xml[start..start + len]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    Some(text.trim().to_string())
}

/// `Code: Message` of an S3 error answer, when the body is one.
fn s3_error(body: &str) -> Option<String> {
    match (xml_text(body, "Code"), xml_text(body, "Message")) {
        (Some(c), Some(m)) if !m.is_empty() => Some(format!("{c}: {m}")),
        (Some(c), _) => Some(c),
        (None, Some(m)) => Some(m),
        (None, None) => None,
    }
}

/// Every key a listing gives, following continuation tokens: `page(token)` fetches one page
/// (the XML of one ListObjectsV2 answer). Names are the keys without `prefix`.
fn list_pages(
    prefix: &str,
    mut page: impl FnMut(Option<&str>) -> Result<String>,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let xml = page(token.as_deref())?;
        let list = ListObjectsV2::parse_response(&xml)
            .map_err(|e| anyhow!("cannot read the listing of {prefix}: {e}"))?;
        names.extend(
            list.contents
                .into_iter()
                .filter_map(|c| c.key.strip_prefix(prefix).map(decode_name)),
        );
        match list.next_continuation_token {
            Some(next) if token.as_deref() == Some(next.as_str()) => {
                // A server that gives the same token again would list forever.
                return Err(anyhow!(
                    "the listing of {prefix} does not advance (the same continuation token twice)"
                ));
            }
            Some(next) => token = Some(next),
            None => break,
        }
    }
    names.sort();
    Ok(names)
}

/// The size of each part of a multipart upload of `size` bytes: 8 MiB, or more (in whole
/// MiB) when that would make more than 10,000 parts.
fn part_size(size: u64) -> u64 {
    MIN_PART.max(size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20)
}

/// Whether a request that failed this way may succeed when tried again.
fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::HostNotFound
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled
    )
}

impl S3Store {
    /// The store for `s3://<bucket>/…` (`url`), reading the environment through `env`.
    pub(super) fn open(
        url: &str,
        bucket: &str,
        cfg: &RawRemote,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<S3Store> {
        let fail = |text: String| crate::error::failed(format!("remote cache {url}: {text}"));
        let region = cfg
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = cfg
            .endpoint
            .clone()
            .map(|e| (e, "`endpoint`"))
            .or_else(|| env("AWS_ENDPOINT_URL").map(|e| (e, "AWS_ENDPOINT_URL")))
            .or_else(|| env("AWS_ENDPOINT").map(|e| (e, "AWS_ENDPOINT")));
        let (base, style, from) = match endpoint {
            Some((e, from)) => (e, UrlStyle::Path, from),
            None => {
                let style = if dns_safe(bucket) {
                    UrlStyle::VirtualHost
                } else {
                    UrlStyle::Path
                };
                (format!("https://s3.{region}.amazonaws.com"), style, "")
            }
        };
        // (`url::Url`, named through rusty-s3's signature: url is no direct dependency.)
        let parsed = base
            .parse()
            .map_err(|e| fail(format!("{from} `{base}` is not a URL: {e}")))?;
        let bucket = Bucket::new(parsed, style, bucket.to_string(), region).map_err(|e| {
            fail(format!(
                "{from} `{base}`: {e} (expected http:// or https://)"
            ))
        })?;
        let allow_http = cfg.allow_http.unwrap_or(
            cfg.endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
        );
        let ready = if bucket.base_url().scheme() == "http" && !allow_http {
            Err(format!(
                "{from} `{base}` is plain http, which sends the cache in clear; use https, or \
                 set `allow_http = true` in [remote]"
            ))
        } else {
            let key = env("AWS_ACCESS_KEY_ID").filter(|v| !v.trim().is_empty());
            let secret = env("AWS_SECRET_ACCESS_KEY").filter(|v| !v.trim().is_empty());
            let token = env("AWS_SESSION_TOKEN").filter(|v| !v.trim().is_empty());
            match (key, secret) {
                (Some(k), Some(s)) => Ok(match token {
                    Some(t) => Credentials::new_with_token(k, s, t),
                    None => Credentials::new(k, s),
                }),
                (k, s) => {
                    let missing: Vec<&str> = [
                        k.is_none().then_some("AWS_ACCESS_KEY_ID"),
                        s.is_none().then_some("AWS_SECRET_ACCESS_KEY"),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    Err(format!(
                        "no S3 credentials: set {} (pipe reads AWS_ACCESS_KEY_ID, \
                         AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN from the environment only: \
                         no profiles, no instance metadata)",
                        missing.join(" and ")
                    ))
                }
            }
        };
        let agent = ureq::Agent::config_builder()
            // Error answers are read here, for S3's Code and Message.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(600)))
            // A presigned URL is valid for one host only: a redirect is an error to show.
            .max_redirects(0)
            .max_redirects_will_error(false)
            // Keep a connection for each transfer thread (`jobs`, and parts of big objects).
            .max_idle_connections(64)
            .max_idle_connections_per_host(64)
            .user_agent(concat!("pipe/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(S3Store {
            url: url.to_string(),
            bucket,
            ready,
            agent,
        })
    }

    fn host(&self) -> String {
        let u = self.bucket.base_url();
        match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or("")),
            None => u.host_str().unwrap_or("").to_string(),
        }
    }

    fn fail(&self, text: String) -> anyhow::Error {
        anyhow!(explain(&self.url, &text))
    }

    /// Send a request made by `attempt` (which signs it with the credentials), trying again
    /// after a short pause on a connection error or a 5xx / 429 answer.
    fn call(
        &self,
        what: &str,
        attempt: impl Fn(&Credentials) -> std::result::Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response<ureq::Body>> {
        let creds = self.ready.as_ref().map_err(|why| self.fail(why.clone()))?;
        let mut tries = 0;
        loop {
            let pause = Duration::from_millis(250 << (2 * tries));
            match attempt(creds) {
                Ok(r)
                    if (r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS)
                        && tries < RETRIES => {}
                Ok(r) => return Ok(r),
                Err(e) if transient(&e) && tries < RETRIES => {}
                Err(e) => {
                    let host = self.host();
                    let tried = if tries > 0 {
                        format!(" ({} attempts)", tries + 1)
                    } else {
                        String::new()
                    };
                    return Err(self.fail(match e {
                        ureq::Error::Timeout(t) => {
                            format!("{what}: timed out ({t}) talking to {host}{tried}")
                        }
                        e => format!("{what}: connection to {host} failed{tried}: {e}"),
                    }));
                }
            }
            tries += 1;
            std::thread::sleep(pause);
        }
    }

    /// The error for an unexpected answer: its status and, when the body says, S3's error
    /// code and message.
    fn status_error(&self, what: &str, r: Response<ureq::Body>) -> anyhow::Error {
        let status = r.status();
        let mut body = Vec::new();
        let _ = r
            .into_body()
            .into_reader()
            .take(64 << 10)
            .read_to_end(&mut body);
        let mut text = format!(
            "{what}: HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        if let Some(detail) = s3_error(&String::from_utf8_lossy(&body)) {
            text.push_str(": ");
            text.push_str(&detail);
        }
        self.fail(text.trim_end().to_string())
    }

    /// A successful answer's body as text (small XML documents).
    fn text(&self, what: &str, r: Response<ureq::Body>) -> Result<String> {
        let mut body = Vec::new();
        r.into_body()
            .into_reader()
            .take(256 << 20)
            .read_to_end(&mut body)
            .map_err(|e| self.fail(format!("{what}: cannot read the answer: {e}")))?;
        String::from_utf8(body).map_err(|_| self.fail(format!("{what}: the answer is not UTF-8")))
    }

    /// Upload part `i` (from 0) of `up`, read into `buf`; its ETag.
    fn upload_part(&self, up: &Upload, i: usize, buf: &mut Vec<u8>) -> Result<String> {
        use std::os::unix::fs::FileExt;
        let start = i as u64 * up.part;
        buf.resize(up.part.min(up.size - start) as usize, 0);
        up.file
            .read_exact_at(buf, start)
            .map_err(|e| anyhow!("cannot read {}: {e}", up.local.display()))?;
        let n = u16::try_from(i + 1).expect("at most 10,000 parts");
        let what = format!("PUT {} (part {n} of {})", up.key, up.count);
        let r = self.call(&what, |c| {
            let url = self
                .bucket
                .upload_part(Some(c), up.key, n, up.id)
                .sign(SIGNED_FOR);
            self.agent.put(url.as_str()).send(&buf[..])
        })?;
        if !r.status().is_success() {
            return Err(self.status_error(&what, r));
        }
        r.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| self.fail(format!("{what}: the answer has no ETag")))
    }

    /// Upload every part, [`PART_THREADS`] at a time; their ETags in order.
    fn upload_parts(&self, up: &Upload) -> Result<Vec<String>> {
        let etags: Vec<Mutex<Option<String>>> = (0..up.count).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..PART_THREADS.min(up.count) {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= up.count {
                            break;
                        }
                        match self.upload_part(up, i, &mut buf) {
                            Ok(etag) => {
                                *etags[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(etag)
                            }
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                                f.get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(etags
            .into_iter()
            .map(|e| {
                e.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_default()
            })
            .collect())
    }

    fn complete(&self, key: &str, id: &str, etags: &[String]) -> Result<()> {
        let what = format!("completing the upload of {key}");
        let r = self.call(&what, |c| {
            let action = self.bucket.complete_multipart_upload(
                Some(c),
                key,
                id,
                etags.iter().map(String::as_str),
            );
            let url = action.sign(SIGNED_FOR);
            self.agent.post(url.as_str()).send(action.body())
        })?;
        if !r.status().is_success() {
            return Err(self.status_error(&what, r));
        }
        // S3 may answer 200 and still fail: the body then holds an Error.
        let body = self.text(&what, r)?;
        CompleteMultipartUploadResponse::parse(&body).map_err(|_| {
            self.fail(format!(
                "{what}: {}",
                s3_error(&body).unwrap_or_else(|| "unexpected answer".into())
            ))
        })?;
        Ok(())
    }
}

impl Store for S3Store {
    fn get(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>> {
        let key = encode_key(key);
        let what = format!("GET {key}");
        let r = self.call(&what, |c| {
            let url = self.bucket.get_object(Some(c), &key).sign(SIGNED_FOR);
            self.agent.get(url.as_str()).call()
        })?;
        match r.status() {
            s if s.is_success() => Ok(Some(Box::new(r.into_body().into_reader()))),
            StatusCode::NOT_FOUND => {
                // A missing key is `None`; a missing bucket is an error to show.
                let err = self.status_error(&what, r);
                if err.to_string().contains("NoSuchBucket") {
                    Err(err)
                } else {
                    Ok(None)
                }
            }
            _ => Err(self.status_error(&what, r)),
        }
    }

    fn head(&self, key: &str) -> Result<bool> {
        let key = encode_key(key);
        let what = format!("HEAD {key}");
        let r = self.call(&what, |c| {
            let url = self.bucket.head_object(Some(c), &key).sign(SIGNED_FOR);
            self.agent.head(url.as_str()).call()
        })?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_error(&what, r)),
        }
    }

    fn put_create(&self, key: &str, local: &Path, _size: u64) -> Result<bool> {
        use std::io::{Seek, SeekFrom};
        let key = encode_key(key);
        let what = format!("PUT {key}");
        let file = std::fs::File::open(local)
            .map_err(|e| anyhow!("cannot read {}: {e}", local.display()))?;
        let r = self.call(&what, |c| {
            let mut action = self.bucket.put_object(Some(c), &key);
            // Create-only: the server refuses the PUT if the key exists (signed, so no proxy
            // can drop it).
            action.headers_mut().insert("if-none-match", "*");
            let url = action.sign(SIGNED_FOR);
            (&file).seek(SeekFrom::Start(0))?;
            self.agent
                .put(url.as_str())
                .header("if-none-match", "*")
                .send(&file)
        })?;
        match r.status() {
            s if s.is_success() => Ok(true),
            // 412 Precondition Failed: the key exists; 409: another create-only PUT of it
            // is under way. Either way it is (or will be) there, and the same bytes.
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => Ok(false),
            _ => Err(self.status_error(&what, r)),
        }
    }

    fn put_multipart(&self, key: &str, local: &Path, size: u64) -> Result<()> {
        let key = encode_key(key);
        let what = format!("starting the upload of {key}");
        let r = self.call(&what, |c| {
            let url = self
                .bucket
                .create_multipart_upload(Some(c), &key)
                .sign(SIGNED_FOR);
            self.agent.post(url.as_str()).send_empty()
        })?;
        if !r.status().is_success() {
            return Err(self.status_error(&what, r));
        }
        let body = self.text(&what, r)?;
        let created = CreateMultipartUpload::parse_response(&body)
            .map_err(|e| self.fail(format!("{what}: unexpected answer: {e}")))?;
        let id = created.upload_id();
        let done = std::fs::File::open(local)
            .map_err(|e| anyhow!("cannot read {}: {e}", local.display()))
            .and_then(|file| {
                let part = part_size(size);
                self.upload_parts(&Upload {
                    key: &key,
                    id,
                    file,
                    local,
                    size,
                    part,
                    count: size.div_ceil(part) as usize,
                })
            })
            .and_then(|etags| self.complete(&key, id, &etags));
        if done.is_err() {
            // The parts would be kept (and paid for) until the upload is aborted.
            let _ = self.call("abort", |c| {
                let url = self
                    .bucket
                    .abort_multipart_upload(Some(c), &key, id)
                    .sign(SIGNED_FOR);
                self.agent.delete(url.as_str()).call()
            });
        }
        done
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = match encode_key(dir) {
            d if d.is_empty() => d,
            d => format!("{d}/"),
        };
        let what = format!("LIST {prefix}");
        list_pages(&prefix, |token| {
            let r = self.call(&what, |c| {
                let mut action = self.bucket.list_objects_v2(Some(c));
                action.with_prefix(prefix.as_str());
                action.with_delimiter("/");
                if let Some(t) = token {
                    action.with_continuation_token(t);
                }
                self.agent.get(action.sign(SIGNED_FOR).as_str()).call()
            })?;
            if !r.status().is_success() {
                return Err(self.status_error(&what, r));
            }
            self.text(&what, r)
        })
        .map_err(|e| {
            if e.to_string().starts_with("remote cache ") {
                e
            } else {
                self.fail(e.to_string())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    fn remote(endpoint: Option<&str>) -> RawRemote {
        RawRemote {
            url: "s3://bucket/p".into(),
            endpoint: endpoint.map(str::to_string),
            region: None,
            allow_http: None,
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const CREDS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];

    fn open(cfg: &RawRemote, vars: &[(&str, &str)]) -> S3Store {
        S3Store::open("s3://bucket/p", "bucket", cfg, &env_of(vars)).unwrap()
    }

    #[test]
    fn keys_are_encoded_as_object_store_did() {
        assert_eq!(encode_key("p/objects/ab/cdef"), "p/objects/ab/cdef");
        assert_eq!(encode_key("a//b/./c/../d#e f"), "a/b/%2E/c/%2E%2E/d%23e f");
        assert_eq!(encode_key("ü/x*y?"), "%C3%BC/x%2Ay%3F");
        for name in ["v1.json", "d#e f", "ü*?%", "a%2"] {
            assert_eq!(decode_name(&encode_key(name)), name);
        }
    }

    #[test]
    fn error_bodies_give_code_and_message() {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match &amp; so on</Message><RequestId>1</RequestId></Error>"#;
        assert_eq!(
            s3_error(body).unwrap(),
            "SignatureDoesNotMatch: The request signature we calculated does not match & so on"
        );
        assert_eq!(
            s3_error("<Error><Code>NoSuchKey</Code></Error>").unwrap(),
            "NoSuchKey"
        );
        assert_eq!(s3_error("<html>oops</html>"), None);
    }

    fn page(keys: &[String], token: Option<&str>) -> String {
        let contents: String = keys
            .iter()
            .map(|k| format!("<Contents><Key>{k}</Key><Size>1</Size></Contents>"))
            .collect();
        let tail = match token {
            Some(t) => format!(
                "<IsTruncated>true</IsTruncated><NextContinuationToken>{t}</NextContinuationToken>"
            ),
            None => "<IsTruncated>false</IsTruncated>".into(),
        };
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/runs/</Prefix><KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType>{contents}{tail}</ListBucketResult>"#,
            keys.len()
        )
    }

    #[test]
    fn listing_follows_continuation_tokens_past_1000_keys() {
        let keys: Vec<String> = (0..2500).map(|i| format!("p/runs/{i:05}.json")).collect();
        let mut asked = Vec::new();
        let names = list_pages("p/runs/", |token| {
            asked.push(token.map(str::to_string));
            Ok(match token {
                None => page(&keys[..1000], Some("t1")),
                Some("t1") => page(&keys[1000..2000], Some("t2")),
                Some("t2") => page(&keys[2000..], None),
                Some(t) => panic!("unknown token {t}"),
            })
        })
        .unwrap();
        assert_eq!(asked, [None, Some("t1".into()), Some("t2".into())]);
        assert_eq!(names.len(), 2500);
        assert_eq!(names[0], "00000.json");
        assert_eq!(names[2499], "02499.json");
    }

    #[test]
    fn a_listing_that_does_not_advance_is_an_error_not_a_loop() {
        let keys = vec!["p/runs/a.json".to_string()];
        let mut pages = 0;
        let r = list_pages("p/runs/", |_| {
            pages += 1;
            Ok(page(&keys, Some("same")))
        });
        assert!(r.unwrap_err().to_string().contains("does not advance"));
        assert_eq!(pages, 2);
        // Truncated without a token: an error, not a listing silently cut short.
        let r = list_pages("p/runs/", |_| {
            Ok(page(&keys, None).replace(
                "<IsTruncated>false</IsTruncated>",
                "<IsTruncated>true</IsTruncated>",
            ))
        });
        assert!(r.is_err());
    }

    #[test]
    fn parts_are_8_mib_unless_that_makes_more_than_10000() {
        assert_eq!(part_size(65 << 20), 8 << 20);
        assert_eq!(part_size(70 << 30), 8 << 20);
        let big = 200u64 << 30;
        assert!(part_size(big) > 8 << 20);
        assert!(big.div_ceil(part_size(big)) <= MAX_PARTS);
        assert_eq!(part_size(big) % (1 << 20), 0);
    }

    #[test]
    fn settings_come_from_remote_then_environment() {
        // No endpoint: AWS, virtual-hosted, region from AWS_REGION.
        let s = open(
            &remote(None),
            &[CREDS[0], CREDS[1], ("AWS_REGION", "eu-west-3")],
        );
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://bucket.s3.eu-west-3.amazonaws.com/"
        );
        assert!(s.ready.is_ok());
        // A bucket name with dots stays in the path (AWS's certificate has one label).
        let s = S3Store::open("s3://a.b/p", "a.b", &remote(None), &env_of(&CREDS)).unwrap();
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://s3.us-east-1.amazonaws.com/a.b/"
        );
        // An endpoint: path-style; plain http allowed because the endpoint says so.
        let s = open(&remote(Some("http://127.0.0.1:8333")), &CREDS);
        assert_eq!(
            s.bucket.base_url().as_str(),
            "http://127.0.0.1:8333/bucket/"
        );
        assert!(s.ready.is_ok());
        // AWS_ENDPOINT_URL (or AWS_ENDPOINT) when `endpoint` is not set.
        let s = open(
            &remote(None),
            &[
                CREDS[0],
                CREDS[1],
                ("AWS_ENDPOINT", "https://minio.example:9000"),
            ],
        );
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://minio.example:9000/bucket/"
        );
        // `endpoint` wins over the environment.
        let s = open(
            &remote(Some("https://a.example")),
            &[
                CREDS[0],
                CREDS[1],
                ("AWS_ENDPOINT_URL", "https://b.example"),
            ],
        );
        assert_eq!(s.bucket.base_url().as_str(), "https://a.example/bucket/");
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let mut cfg = remote(Some("http://127.0.0.1:8333"));
        cfg.allow_http = Some(false);
        let why = open(&cfg, &CREDS).ready.unwrap_err();
        assert!(why.contains("allow_http = true"), "{why}");
        // From the environment, http needs `allow_http = true`.
        let env = [
            CREDS[0],
            CREDS[1],
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ];
        let why = open(&remote(None), &env).ready.unwrap_err();
        assert!(
            why.contains("AWS_ENDPOINT_URL `http://127.0.0.1:1` is plain http"),
            "{why}"
        );
        let mut cfg = remote(None);
        cfg.allow_http = Some(true);
        assert!(open(&cfg, &env).ready.is_ok());
        // Not a URL, or not http(s): refused at once.
        for bad in ["127.0.0.1:8333", "ftp://x", "not a url"] {
            let e = S3Store::open(
                "s3://bucket/p",
                "bucket",
                &remote(Some(bad)),
                &env_of(&CREDS),
            );
            let e = e.err().unwrap().to_string();
            assert!(
                e.starts_with("remote cache s3://bucket/p: `endpoint`"),
                "{e}"
            );
        }
    }

    #[test]
    fn missing_credentials_are_named() {
        let s = open(&remote(Some("http://127.0.0.1:1")), &[CREDS[0]]);
        let e = s.head("k").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "remote cache s3://bucket/p: no S3 credentials: set AWS_SECRET_ACCESS_KEY ("
            ),
            "{e}"
        );
        let s = open(&remote(Some("http://127.0.0.1:1")), &[]);
        let e = s.get("k").err().unwrap().to_string();
        assert!(
            e.contains("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
            "{e}"
        );
        let s = open(
            &remote(Some("http://127.0.0.1:1")),
            &[CREDS[0], CREDS[1], ("AWS_SESSION_TOKEN", "tok")],
        );
        assert_eq!(s.ready.unwrap().token(), Some("tok"));
    }

    /// One request as the fake server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        line: String,
        headers: Vec<String>,
        body: Vec<u8>,
    }

    /// A fake S3 on 127.0.0.1 that answers `n` connections (one request each) with
    /// `answer(request)` = (status line, body), then stops.
    fn fake(
        n: usize,
        answer: impl Fn(&Seen) -> (&'static str, String) + Send + 'static,
    ) -> (String, std::thread::JoinHandle<Vec<Seen>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for stream in l.incoming().take(n) {
                let mut stream = stream.unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    headers.push(h.trim().to_ascii_lowercase());
                }
                let len = headers
                    .iter()
                    .find_map(|h| h.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let req = Seen {
                    line: line.trim().to_string(),
                    headers,
                    body,
                };
                let (status, body) = answer(&req);
                seen.push(req);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
            seen
        });
        (endpoint, h)
    }

    fn error(code: &str, message: &str) -> String {
        format!("<Error><Code>{code}</Code><Message>{message}</Message></Error>")
    }

    #[test]
    fn a_5xx_answer_is_tried_three_times_then_shown_with_its_code() {
        let (ep, h) = fake(3, |_| {
            (
                "503 Service Unavailable",
                error("SlowDown", "Reduce your rate"),
            )
        });
        let s = open(&remote(Some(&ep)), &CREDS);
        let t = std::time::Instant::now();
        let e = s.head("p/runs/x.json").err().unwrap().to_string();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // HEAD answers have no body: the status alone.
        assert!(
            e.contains("HEAD p/runs/x.json: HTTP 503 Service Unavailable"),
            "{e}"
        );
        assert_eq!(h.join().unwrap().len(), 3);
        let (ep, h) = fake(3, |_| {
            (
                "500 Internal Server Error",
                error("InternalError", "We broke"),
            )
        });
        let s = open(&remote(Some(&ep)), &CREDS);
        let e = s.get("p/runs/x.json").err().unwrap().to_string();
        assert!(
            e.starts_with(
                "remote cache s3://bucket/p: GET p/runs/x.json: HTTP 500 Internal Server Error: InternalError: We broke"
            ),
            "{e}"
        );
        assert_eq!(h.join().unwrap().len(), 3);
    }

    #[test]
    fn access_denied_is_said_once_with_the_hint() {
        let (ep, h) = fake(1, |_| {
            (
                "403 Forbidden",
                error("SignatureDoesNotMatch", "bad signature"),
            )
        });
        let s = open(&remote(Some(&ep)), &CREDS);
        let src = tempfile::NamedTempFile::new().unwrap();
        let e = s.put_create("p/a", src.path(), 0).unwrap_err().to_string();
        assert!(
            e.contains("HTTP 403 Forbidden: SignatureDoesNotMatch: bad signature"),
            "{e}"
        );
        assert!(e.ends_with("(access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"));
        assert_eq!(h.join().unwrap().len(), 1, "a 403 is not tried again");
    }

    #[test]
    fn a_dead_server_is_a_quick_clear_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = open(&remote(Some(&format!("http://127.0.0.1:{port}"))), &CREDS);
        let t = std::time::Instant::now();
        let e = s.list("p/runs").unwrap_err().to_string();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            e.contains(&format!(
                "LIST p/runs/: connection to 127.0.0.1:{port} failed (3 attempts)"
            )),
            "{e}"
        );
        assert!(
            e.ends_with("(cannot reach the server: is it running, and is `endpoint` right?)"),
            "{e}"
        );
    }

    #[test]
    fn puts_are_create_only_and_an_existing_key_is_no_error() {
        let (ep, h) = fake(2, |req| {
            if req.line.starts_with("PUT /bucket/p/new?") {
                ("200 OK", String::new())
            } else {
                (
                    "412 Precondition Failed",
                    error(
                        "PreconditionFailed",
                        "At least one of the pre-conditions you specified did not hold",
                    ),
                )
            }
        });
        let s = open(&remote(Some(&ep)), &CREDS);
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), b"hello").unwrap();
        assert!(s.put_create("p/new", src.path(), 5).unwrap());
        assert!(!s.put_create("p/old", src.path(), 5).unwrap());
        let seen = h.join().unwrap();
        for req in &seen {
            assert!(
                req.headers.contains(&"if-none-match: *".to_string()),
                "{req:?}"
            );
            assert!(
                req.headers.contains(&"content-length: 5".to_string()),
                "{req:?}"
            );
            // Signed as a header of the request, with the credentials in the query.
            assert!(
                req.line
                    .contains("X-Amz-SignedHeaders=host%3Bif-none-match"),
                "{req:?}"
            );
            assert!(
                req.line.contains("X-Amz-Credential=AKIDEXAMPLE%2F"),
                "{req:?}"
            );
            assert_eq!(req.body, b"hello");
        }
    }

    #[test]
    fn gets_tell_a_missing_key_from_a_missing_bucket() {
        let (ep, h) = fake(3, |req| {
            if req.line.contains("/gone ") || req.line.contains("/gone?") {
                (
                    "404 Not Found",
                    error("NoSuchKey", "The specified key does not exist."),
                )
            } else if req.line.contains("/nobucket") {
                (
                    "404 Not Found",
                    error("NoSuchBucket", "The specified bucket does not exist"),
                )
            } else {
                ("200 OK", "content".into())
            }
        });
        let s = open(&remote(Some(&ep)), &CREDS);
        let mut text = String::new();
        s.get("p/here")
            .unwrap()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "content");
        assert!(s.get("p/gone").unwrap().is_none());
        let e = s.get("p/nobucket").err().unwrap().to_string();
        assert!(e.contains("NoSuchBucket"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn a_listing_over_http_sends_the_continuation_token() {
        let (ep, h) = fake(2, |req| {
            let keys: Vec<String> = if req.line.contains("continuation-token=next%2Bpage") {
                vec!["p/runs/b.json".into()]
            } else {
                vec!["p/runs/a.json".into()]
            };
            let token = (!req.line.contains("continuation-token")).then_some("next+page");
            ("200 OK", page(&keys, token))
        });
        let s = open(&remote(Some(&ep)), &CREDS);
        assert_eq!(s.list("p/runs").unwrap(), ["a.json", "b.json"]);
        let seen = h.join().unwrap();
        assert!(seen[0].line.contains("prefix=p%2Fruns%2F"), "{:?}", seen[0]);
        assert!(seen[0].line.contains("delimiter=%2F"), "{:?}", seen[0]);
        assert!(seen[0].line.contains("list-type=2"), "{:?}", seen[0]);
    }
}
