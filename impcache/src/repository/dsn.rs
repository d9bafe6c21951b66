//! Connection strings of the Redis-backed repositories, in one place: parsing and the checks of a
//! server's DSN, a Sentinel's address and a cluster node's address; the redacted form that is the
//! only one ever printed; and the one `scrub` that removes passwords from a library's messages.

use crate::error::{Error, Result};

/// The DSN with any password replaced by `***`: each `password=` / `pass=` query parameter's
/// value (see [`query_credentials`]), then the userinfo before the *last* `@` (a
/// password may hold unencoded `/`, `?`, `#` and `@`; a socket path's `@` after its first `/`
/// is no userinfo's). Works on strings that are not valid URLs too, since those are the ones
/// that end up in errors: a mistyped separator (`redis//`, `redis:/`, `redis:///`, none at all)
/// still has its userinfo hidden. Where the address is ambiguous (an `@` in a query value or a
/// fragment) it hides too much, never too little.
pub(crate) fn redact(dsn: &str) -> String {
    if let Some(redacted) = redact_as_url(dsn) {
        return redacted;
    }
    // First, so that an `@` in a hidden value is not taken for the userinfo's.
    let dsn = hide_query_passwords(dsn);
    // The scheme's letters, then whatever separator follows them (`://` when well formed).
    let scheme_end = dsn
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')))
        .unwrap_or(dsn.len());
    // Colons, then slashes: a colon after a slash starts the userinfo (`redis://:pw@host`).
    let colons_end = dsn[scheme_end..]
        .find(|c: char| c != ':')
        .map_or(dsn.len(), |at| scheme_end + at);
    let separator_end = dsn[colons_end..]
        .find(|c: char| !matches!(c, '/' | '\\'))
        .map_or(dsn.len(), |at| colons_end + at);
    // Letters followed by no separator are no scheme (`pw@host`).
    let (scheme_end, separator_end) = if separator_end == scheme_end {
        (0, 0)
    } else {
        (scheme_end, separator_end)
    };
    let (scheme, prefix, rest) = (
        &dsn[..scheme_end],
        &dsn[..separator_end],
        &dsn[separator_end..],
    );
    let userinfo_end = match scheme {
        "unix" | "redis+unix" => rest[..rest.find('/').unwrap_or(rest.len())].rfind('@'),
        _ => rest.rfind('@'),
    };
    let Some(at) = userinfo_end else {
        return dsn;
    };
    let (userinfo, address) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{prefix}{user}:***@{address}"),
        // `redis://name@host`: a user name without a password, for the `redis` crate as for
        // redis-py; hidden all the same, in case it is a password written without its `:`.
        None => format!("{prefix}***@{address}"),
    }
}

/// [`redact`] of a DSN the URL parser reads (as the `redis` crate and redis-py do) with a
/// userinfo in its authority: the userinfo is the authority's text up to its last `@`, the
/// authority ending at the first `/`, `?` or `#` after the scheme's `//` (where the parser ends
/// it), so a password holding `&` or `=` is the userinfo's, not a query's (`&passw0rd=` in a
/// password was taken for a query parameter, which swallowed the `@host`, and the password's
/// start was shown: found by a probe). With an `@` past the authority (a TCP DSN, parsed or
/// not): a password holding an unencoded delimiter (`redis://u:12?ab=cd@host`, whose `12` reads
/// as a port and `ab` as a query parameter) or a query value's `@`; everything up to the last
/// `@` is taken for the userinfo, too much rather than too little (the text rules hid the
/// query's values first and showed the password's parts as a port and a parameter's name:
/// found by a regression hunt). `None` for anything else, left to the text rules.
fn redact_as_url(dsn: &str) -> Option<String> {
    let start = dsn.find("://")? + "://".len();
    let end = dsn[start..]
        .find(['/', '?', '#'])
        .map_or(dsn.len(), |at| start + at);
    let at = match dsn[end..].rfind('@') {
        // A socket's path may hold an `@`: the text rules read it.
        Some(_) if matches!(&dsn[..start - "://".len()], "unix" | "redis+unix") => return None,
        Some(past) => end + past,
        None => {
            url::Url::parse(dsn).ok()?;
            start + dsn[start..end].rfind('@')?
        }
    };
    let shown = match dsn[start..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    let (scheme, rest) = (&dsn[..start], &dsn[at + 1..]);
    Some(format!("{scheme}{shown}@{}", hide_query_passwords(rest)))
}

/// `dsn` with the value of each query parameter that may hold a password
/// ([`may_hold_a_password`]; up to the next `&` or `#`) replaced by `***`.
fn hide_query_passwords(dsn: &str) -> String {
    let mut hidden = String::with_capacity(dsn.len());
    let mut rest = dsn;
    while let Some(at) = rest.find(['?', '&']) {
        let (before, param) = rest.split_at(at + 1);
        hidden.push_str(before);
        rest = param;
        let end = param.find(['&', '#']).unwrap_or(param.len());
        let Some((name, _value)) = param[..end].split_once('=') else {
            continue;
        };
        if may_hold_a_password(name) {
            hidden.push_str(name);
            hidden.push_str("=***");
            rest = &param[end..];
        }
    }
    hidden.push_str(rest);
    hidden
}

/// Whether a query parameter written `name` (percent-encoded or not, in any case) may hold a
/// password: any but the known names ([`known_query_parameter`]) other than `password`,
/// `pass` and `ssl_password`, decoded as the credentials are read ([`query_credentials`]): `pass%77ord` is
/// `password`, and was sent but shown; `pwd=`, refused as unknown, was shown in the refusal
/// (found by probes).
fn may_hold_a_password(name: &str) -> bool {
    // Without the tabs and line breaks the URL parser removes (`p\tassword` is `password`).
    let name: String = name
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    !url::form_urlencoded::parse(name.as_bytes())
        .next()
        .is_some_and(|(decoded, _)| {
            known_query_parameter(&decoded)
                && !matches!(decoded.as_ref(), "password" | "pass" | "ssl_password")
        })
}

/// The query parameters impcache reads: the database, the login (as redis-py reads them, and
/// `user=` / `pass=` as the `redis` crate does) and the `redis` crate's `protocol`.
const READ_QUERY_PARAMETERS: &[&str] = &["db", "password", "pass", "username", "user", "protocol"];

/// redis-py's connection options that a URL can give (its `parse_url` passes any query name to
/// the connection, whose constructor refuses the names it does not take), accepted so that one
/// DSN serves both languages, and ignored: impcache has its own connect timeout, deadline,
/// connection handling and TLS settings (`tls_root_certificate`).
const REDIS_PY_QUERY_PARAMETERS: &[&str] = &[
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_read_size",
    "socket_type",
    "health_check_interval",
    "max_connections",
    "retry_on_timeout",
    "retry_on_error",
    "timeout",
    "readonly",
    "client_name",
    "lib_name",
    "lib_version",
    "decode_responses",
    "encoding",
    "encoding_errors",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_min_version",
    "ssl_ciphers",
    "ssl_validate_ocsp",
    "ssl_validate_ocsp_stapled",
    "ssl_ocsp_expected_cert",
];

/// Whether impcache reads or accepts the query parameter `name`.
fn known_query_parameter(name: &str) -> bool {
    READ_QUERY_PARAMETERS.contains(&name) || REDIS_PY_QUERY_PARAMETERS.contains(&name)
}

/// Refuses a query parameter that neither impcache nor redis-py reads: a typo (`passwd=`, `dB=`)
/// was silently ignored, the password not sent and every call refused with `NOAUTH` at run time
/// (found by a probe), as redis-py refuses it.
fn check_query_names(dsn: &str, url: &url::Url) -> Result<()> {
    for (name, value) in url.query_pairs() {
        let name = name.as_ref();
        if known_query_parameter(name) {
            continue;
        }
        // The rest of a password cut short by an unencoded `?` (in the name, or past a `=` in
        // the value): not shown.
        if name.contains('@') || value.contains('@') {
            return Err(invalid(dsn)(format!(
                "the query holds an unknown parameter{}",
                credentials_hint(dsn)
            )));
        }
        let hint = READ_QUERY_PARAMETERS
            .iter()
            .find(|known| known.eq_ignore_ascii_case(name))
            .copied()
            .or_else(|| {
                let lower = name.to_ascii_lowercase();
                (lower.starts_with("pass") || lower == "pwd").then_some("password")
            })
            .map(|known| format!(" (did you mean `{known}`?)"))
            .unwrap_or_default();
        return Err(invalid(dsn)(format!(
            "unknown query parameter `{}`{hint}; impcache reads `db`, `password`, `username` \
             and `protocol` (and redis-py's connection options, ignored)",
            crate::error::escaped(name)
        )));
    }
    Ok(())
}

/// Each DSN redacted, joined with `, `: how a list of addresses appears in an error.
#[cfg(feature = "cluster")]
pub(crate) fn redact_all<S: AsRef<str>>(dsns: &[S]) -> String {
    dsns.iter()
        .map(|dsn| redact(dsn.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes the password of each of `dsns` from `message`, in case a library echoed it.
pub(crate) fn scrub<S: AsRef<str>>(message: &str, dsns: &[S]) -> String {
    let mut message = message.to_owned();
    for dsn in dsns {
        if let Ok(url) = url::Url::parse(dsn.as_ref()) {
            if let Some(password) = url.password().filter(|p| !p.is_empty()) {
                message = message.replace(password, "***");
            }
        }
    }
    message
}

/// How a repository built over an existing `redis::Client` shows its server.
pub(crate) fn describe_client(client: &redis::Client) -> String {
    format!("{} (existing client)", client.get_connection_info().addr())
}

/// Checks the DSN of one server and makes a client for it, on the operating system's TCP
/// defaults (as the `redis` crate: `TCP_NODELAY` measured slower under concurrency,
/// BENCHMARKS.md case 1b).
pub(crate) fn server(dsn: &str) -> Result<redis::Client> {
    let invalid = invalid(dsn);
    if dsn.trim().is_empty() {
        return Err(invalid("the DSN is empty".to_owned()));
    }
    let url = parse(
        dsn,
        "expected redis://host:port/db, rediss://..., or unix:///path",
    )?;
    match url.scheme() {
        "redis" | "rediss" | "valkey" | "valkeys" => {
            require_host(dsn, &url)?;
            check_tls(dsn, &url)?;
        }
        "unix" | "redis+unix" => {
            if url.path().is_empty() || url.path() == "/" {
                return Err(invalid("the socket path is missing".to_owned()));
            }
        }
        other => {
            return Err(invalid(format!(
                "unsupported scheme `{other}`; expected redis, rediss, unix or redis+unix"
            )))
        }
    }
    let db = database(dsn, &url)?;
    let mut info = connection_info(dsn, &url)?;
    // `redis://host/?db=3`: redis-py (the Python library's client) reads the database from the
    // query as well as from the path; the `redis` crate only for sockets, and would silently use
    // database 0. Applied here, so both languages share one database.
    if let Some(db) = db {
        let settings = info.redis_settings().clone().set_db(i64::from(db));
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| invalid(scrub(&e.to_string(), &[dsn])))
}

/// Checks the address of one Sentinel: `redis://host:port` or `rediss://`.
#[cfg(feature = "sentinel")]
pub(crate) fn sentinel(dsn: &str) -> Result<redis::ConnectionInfo> {
    let url = parse(dsn, "expected redis://host:26379 for each Sentinel")?;
    if !matches!(url.scheme(), "redis" | "rediss") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(dsn)(
            "expected redis://host:port (or rediss://) for each Sentinel".to_owned(),
        ));
    }
    check_tls(dsn, &url)?;
    // The `redis` crate would send a path's `SELECT` to the Sentinel, which refuses it: every
    // call failed as an outage; a query's `db` was silently ignored (found by a probe).
    if let Some(db) = database(dsn, &url)?.filter(|&db| db != 0) {
        return Err(invalid(dsn)(format!(
            "a Sentinel has no database `{db}`: set the primary's with \
             `RedisSentinelCacheRepository::builder(..).db({db})`"
        )));
    }
    connection_info(dsn, &url)
}

/// Checks the address of one cluster node: `redis://` or `rediss://` (feature `tls`), with a
/// host, and database 0 if any.
#[cfg(feature = "cluster")]
pub(crate) fn cluster_node(dsn: &str) -> Result<redis::ConnectionInfo> {
    let invalid = invalid(dsn);
    if dsn.trim().is_empty() {
        return Err(invalid("the node address is empty".to_owned()));
    }
    let url = parse(dsn, "expected redis://host:port for each cluster node")?;
    match url.scheme() {
        "redis" | "valkey" | "rediss" | "valkeys" => check_tls(dsn, &url)?,
        "unix" | "redis+unix" => {
            return Err(invalid(
                "cluster nodes are reached over TCP; expected redis://host:port".to_owned(),
            ))
        }
        other => {
            return Err(invalid(format!(
                "unsupported scheme `{other}`; expected redis or rediss"
            )))
        }
    }
    require_host(dsn, &url)?;
    // In the path or the query (`?db=3` was silently ignored, found by a probe).
    if let Some(db) = database(dsn, &url)?.filter(|&db| db != 0) {
        return Err(invalid(format!(
            "a cluster has only database 0, not `{db}`"
        )));
    }
    connection_info(dsn, &url)
}

/// The [`Error::InvalidDsn`] for `dsn` (redacted) and a reason.
fn invalid(dsn: &str) -> impl Fn(String) -> Error + '_ {
    // The reason may repeat a decoded part of the DSN (`the database `1\n2``) or the `redis`
    // crate's words about it: escaped as the DSN is.
    move |reason| Error::InvalidDsn {
        dsn: crate::error::escaped(&redact(dsn)),
        reason: crate::error::escaped(&reason),
    }
}

/// `dsn` as a URL; `expected` says what was expected instead.
fn parse(dsn: &str, expected: &str) -> Result<url::Url> {
    let url = url::Url::parse(dsn).map_err(|e| {
        invalid(dsn)(format!(
            "not a URL ({e}); {expected}{}",
            credentials_hint(dsn)
        ))
    })?;
    // The rest of a password cut short by an unencoded `#` (the part before it read as a host
    // and port): the DSN was accepted, every login then refused (found by a regression hunt).
    if url
        .fragment()
        .is_some_and(|fragment| fragment.contains('@'))
    {
        return Err(invalid(dsn)(format!(
            "the fragment holds `@`{}",
            credentials_hint(dsn)
        )));
    }
    // Port 0 asks the operating system for any free port: no server listens there.
    if url.port() == Some(0) {
        return Err(invalid(dsn)(format!(
            "port 0 is not a server's port; {expected}"
        )));
    }
    Ok(url)
}

/// Refuses a TCP address without a host.
fn require_host(dsn: &str, url: &url::Url) -> Result<()> {
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(dsn)(format!(
            "the host is missing{}",
            credentials_hint(dsn)
        )));
    }
    Ok(())
}

/// What to add to the reason a DSN holding a user name or a password does not parse: one
/// holding `/`, `?` or `#` ends the address early (`redis://:pa/ss@host` has no host), which the
/// reason alone (`empty host`) did not say, the host plainly in the message (found by a probe).
fn credentials_hint(dsn: &str) -> &'static str {
    if dsn
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('@'))
    {
        "; a user name or password holding `/`, `?`, `#` or `@` must be percent-encoded \
         (`%2F`, `%3F`, `%23`, `%40`)"
    } else {
        ""
    }
}

/// Refuses `rediss://` (and `valkeys://`) when this build cannot speak TLS, and with
/// `#insecure`, which asks the `redis` crate not to verify certificates: a feature of its own
/// that impcache does not enable, so every call would fail.
fn check_tls(dsn: &str, url: &url::Url) -> Result<()> {
    if !matches!(url.scheme(), "rediss" | "valkeys") {
        return Ok(());
    }
    if !cfg!(feature = "tls") {
        return Err(invalid(dsn)(format!(
            "`{}://` needs the `tls` feature of impcache",
            url.scheme()
        )));
    }
    if url.fragment() == Some("insecure") {
        return Err(invalid(dsn)(
            "`#insecure` (TLS without certificate verification) is not supported: certificates \
             are always verified; trust a private CA with `tls_root_certificate`"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The database number `db`; refused when it is not one Redis accepts.
fn check_db(dsn: &str, db: &str) -> Result<u16> {
    db.parse::<u16>().map_err(|_| {
        // One holding `@` is the rest of a password cut short by an unencoded `/` (the part
        // before it read as a host and port): not shown (found by a regression hunt).
        if db.contains('@') {
            return invalid(dsn)(format!(
                "the path is not a database number{}",
                credentials_hint(dsn)
            ));
        }
        invalid(dsn)(format!(
            "the database `{db}` is not a number between 0 and 65535"
        ))
    })
}

/// The database a checked `dsn` (parsed as `url`) names, if any: in a TCP address's path
/// (slashes on both sides, as the `redis` crate and redis-py read it: `/0/` is 0) or in a `db`
/// query parameter (as redis-py reads it, for any address); two different ones are refused.
fn database(dsn: &str, url: &url::Url) -> Result<Option<u16>> {
    let tcp = !matches!(url.scheme(), "unix" | "redis+unix");
    let path = url.path().trim_matches('/');
    let path_db = match path {
        "" => None,
        _ if tcp => Some(check_db(dsn, path)?),
        _ => None,
    };
    let mut query_db = None;
    for (name, value) in url.query_pairs() {
        if name == "db" {
            let db = check_db(dsn, &value)?;
            // redis-py takes the first, the `redis` crate (for sockets) the last: refused.
            if let Some(first) = query_db.filter(|&first| first != db) {
                return Err(invalid(dsn)(format!(
                    "two databases: `db={first}` and `db={db}` in the query"
                )));
            }
            query_db = Some(db);
        }
    }
    match (query_db, path_db) {
        (Some(query), Some(path)) if query != path => Err(invalid(dsn)(format!(
            "two databases: `/{path}` in the path and `db={query}` in the query"
        ))),
        (query, path) => Ok(query.or(path)),
    }
}

/// The `redis` crate's reading of a checked `dsn` (parsed as `url`), its errors without the
/// password, with the user name and password of the query applied ([`query_credentials`]).
fn connection_info(dsn: &str, url: &url::Url) -> Result<redis::ConnectionInfo> {
    check_query_names(dsn, url)?;
    let info = redis::IntoConnectionInfo::into_connection_info(dsn)
        .map_err(|e| invalid(dsn)(scrub(&e.to_string(), &[dsn])))?;
    let mut settings = info.redis_settings().clone();
    // On TCP, the userinfo's; on a socket, the `redis` crate reads the query's `user=` and
    // `pass=`, read again here with the rest of the query.
    let socket = matches!(url.scheme(), "unix" | "redis+unix");
    let userinfo = |value: Option<&str>| value.filter(|_| !socket).map(str::to_owned);
    let (username, password) = (userinfo(settings.username()), userinfo(settings.password()));
    if let Some(password) =
        query_credentials(dsn, url, &["password", "pass"], password, "passwords")?
    {
        settings = settings.set_password(password);
    }
    if let Some(username) =
        query_credentials(dsn, url, &["username", "user"], username, "user names")?
    {
        settings = settings.set_username(username);
    }
    Ok(info.set_redis_settings(log_in_as_named_user(settings)))
}

/// `settings` that log in as their user name, if they have one, also without a password: with
/// the empty password, `AUTH name ""`, as redis-py does (it authenticates whenever a user name or
/// a password is given), so a `nopass` ACL user is logged in. The `redis` crate sends `AUTH`
/// only with a password: `redis://bob@host` and `?username=bob` silently ran as `default`, every
/// call refused with `NOAUTH` under `requirepass`, and with `default`'s permissions without it
/// (found by a probe). Every Redis connection impcache opens from a DSN or a user name gets its
/// settings here: a server's, a Sentinel's and a cluster node's ([`connection_info`]), and a
/// Sentinel's primary's.
pub(crate) fn log_in_as_named_user(
    settings: redis::RedisConnectionInfo,
) -> redis::RedisConnectionInfo {
    if settings.username().is_some() && settings.password().is_none() {
        settings.set_password("")
    } else {
        settings
    }
}

/// The password (or user name) of a DSN, which its query may give as well as its userinfo:
/// `password=` (`username=`) as redis-py (the Python library's client) reads it, on TCP and on
/// sockets, and `pass=` (`user=`), as the `redis` crate reads it on sockets only. The `redis`
/// crate ignores them all on TCP, where the password would silently not be sent. `names` are the
/// query parameters, `userinfo` the value in the userinfo, `plural` names the value in the error.
/// Empty values are absent, as for redis-py. Two different values (in the userinfo and the query,
/// or twice in the query) are refused: redis-py takes the userinfo's, then the query's first,
/// and a DSN shared with it must not mean two things.
fn query_credentials(
    dsn: &str,
    url: &url::Url,
    names: &[&str],
    userinfo: Option<String>,
    plural: &str,
) -> Result<Option<String>> {
    let mut found = userinfo
        .filter(|value| !value.is_empty())
        .map(|value| ("the userinfo".to_owned(), value));
    for (name, value) in url.query_pairs() {
        if value.is_empty() || !names.contains(&name.as_ref()) {
            continue;
        }
        match &found {
            Some((first, earlier)) if *earlier != value => {
                return Err(invalid(dsn)(format!(
                    "two different {plural}: in {first} and in `{name}=` of the query"
                )));
            }
            Some(_) => {}
            None => found = Some((format!("`{name}=` of the query"), value.into_owned())),
        }
    }
    Ok(found.map(|(_, value)| value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://u:pw@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://pw@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        // An unencoded `/` in the password; a socket's password as a query parameter.
        assert_eq!(redact("redis://:ab/cd@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(
            redact("unix:///tmp/r.sock?db=2&pass=s3cret#x"),
            "unix:///tmp/r.sock?db=2&pass=***#x"
        );
        assert_eq!(
            redact("redis+unix:///tmp/a@b.sock?password=s3cret"),
            "redis+unix:///tmp/a@b.sock?password=***"
        );
        // A name percent-encoded (decoded to `password` and sent, it was shown), or in another
        // case or spelling (not sent, shown too: found by a probe).
        assert_eq!(
            redact("redis://h:1/0?pass%77ord=s3cret&db=1"),
            "redis://h:1/0?pass%77ord=***&db=1"
        );
        assert_eq!(
            redact("redis://h:1/0?Password=a&PASS=b&passwd=c&db=1"),
            "redis://h:1/0?Password=***&PASS=***&passwd=***&db=1"
        );
        assert_eq!(redact("redis://h:1/0?db=1&x"), "redis://h:1/0?db=1&x");
        // Any parameter not known to hold no secret (`pwd=` was shown).
        assert_eq!(
            redact("redis://h:1/0?pwd=s3cret&protocol=3&timeout=2&ssl_password=k3y"),
            "redis://h:1/0?pwd=***&protocol=3&timeout=2&ssl_password=***"
        );
        // A userinfo password holding what looks like a query parameter; a name with a tab.
        assert_eq!(
            redact("redis://alice:Tr0ub&passw0rd=1@127.0.0.1:6379/0"),
            "redis://alice:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://alice:a&pass=b@h:1/0?db=1&password=c"),
            "redis://alice:***@h:1/0?db=1&password=***"
        );
        assert_eq!(
            redact("redis://h:1/0?p\tassword=SECRET"),
            "redis://h:1/0?p\tassword=***"
        );
        let err = server("redis://:ab/cd@h:1/x").unwrap_err().to_string();
        assert!(!err.contains("cd"), "{err}");
        assert_eq!(
            scrub("bad pw and pw2", &["redis://:pw2@h:1", "redis://u:pw@h:2"]),
            "bad *** and ***"
        );
    }

    #[test]
    fn passwords_with_url_delimiters_or_a_mistyped_separator_never_show() {
        for (dsn, shown) in [
            ("redis://:pw#x@h:1/0", "redis://:***@h:1/0"),
            ("redis://u:pw?x@h:1/0", "redis://u:***@h:1/0"),
            ("redis://:p@ss?word@h:1/0", "redis://:***@h:1/0"),
            ("redis://x#pw@h:1", "redis://***@h:1"),
            // An unencoded `:` in a password without a user (redis-py takes all of `pw:pw2`).
            ("redis://:pw:pw2@h:1/0", "redis://:***@h:1/0"),
            ("redis://u:pw:pw2@h:1/0", "redis://u:***@h:1/0"),
            ("redis//:pw@h:1/0", "redis//:***@h:1/0"),
            ("redis:/:pw@h:1/0", "redis:/:***@h:1/0"),
            ("redis:///:pw@h:1/0", "redis:///:***@h:1/0"),
            ("redis:\\\\:pw@h:1", "redis:\\\\:***@h:1"),
            ("//:pw@h:1", "//:***@h:1"),
            (":pw@h:1", ":***@h:1"),
            ("pw@h:1", "***@h:1"),
            (
                "redis://h:1/0?password=pw&db=1",
                "redis://h:1/0?password=***&db=1",
            ),
        ] {
            assert_eq!(redact(dsn), shown, "{dsn}");
            if let Err(error) = server(dsn) {
                let message = format!("{error} {error:?}");
                assert!(!message.contains("pw"), "{message}");
            }
        }
    }

    /// A password holding `/`, `?` or `#` unencoded cuts the address short: the reason says to
    /// percent-encode it (it said `empty host` alone, the host plainly in the message).
    #[test]
    fn an_unencoded_delimiter_in_a_password_is_named() {
        for dsn in [
            "redis://:zq/x@h:1/0",
            "redis://:zq?x@h:1/0",
            "redis://u:zq#x@h:1",
            // The part before the delimiter read as a host and a port, the rest as a path, a
            // query or a fragment: the password's rest was shown, or (`#`) the DSN accepted.
            "redis://default:1234/zqXY@h:6379/0",
            "redis://default:1234?zqXY@h:6379/0",
            "redis://default:1234?zq=XY@h:6379/0",
            "redis://default:1234?zq=XY@h:6379/0?password=zq",
            "redis://default:1234#zqXY@h:6379/0",
            "redis://us/er:zq@h:6379/0",
        ] {
            let err = server(dsn).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("must be percent-encoded"), "{dsn}: {err}");
            assert!(!err.contains("zq"), "{dsn}: {err}");
        }
        let err = server("redis://h:1/x").map(|_| ()).unwrap_err().to_string();
        assert!(!err.contains("percent-encoded"), "{err}");
    }

    #[test]
    fn the_database_of_a_query_parameter_is_used_as_redis_py_does() {
        let db = |dsn: &str| server(dsn).map(|c| c.get_connection_info().redis_settings().db());
        assert_eq!(db("redis://h:1?db=3").ok(), Some(3));
        assert_eq!(db("redis://h:1/?db=3").ok(), Some(3));
        assert_eq!(db("redis://h:1/3?db=3").ok(), Some(3));
        assert_eq!(db("redis://h:1/4").ok(), Some(4));
        // A trailing slash, as redis-py and the `redis` crate read it.
        assert_eq!(db("redis://h:1/4/").ok(), Some(4));
        assert_eq!(db("redis://h:1/0/").ok(), Some(0));
        assert_eq!(db("unix:///tmp/r.sock?db=5").ok(), Some(5));
        let err = server("redis://h:1/2?db=3").unwrap_err().to_string();
        assert!(err.contains("two databases"), "{err}");
        for twice in ["redis://h:1/?db=3&db=4", "unix:///tmp/r.sock?db=3&db=4"] {
            let err = server(twice).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(
                err,
                Err(format!(
                    "invalid DSN `{twice}`: two databases: `db=3` and `db=4` in the query"
                ))
            );
        }
        assert_eq!(db("redis://h:1/?db=3&db=3").ok(), Some(3));
    }

    /// A user name without a password logs in with the empty password (`AUTH name ""`, as
    /// redis-py), for every kind of address; a password given is kept, and no user name sends
    /// no `AUTH`.
    #[test]
    fn a_lone_user_name_logs_in_with_the_empty_password() -> Result<()> {
        let login = |info: redis::ConnectionInfo| {
            let settings = info.redis_settings();
            (
                settings.username().map(str::to_owned),
                settings.password().map(str::to_owned),
            )
        };
        let bob = (Some("bob".to_owned()), Some(String::new()));
        let server_login = |dsn: &str| server(dsn).map(|c| login(c.get_connection_info().clone()));
        for dsn in [
            "redis://bob@h:1/0",
            "redis://h:1/0?username=bob",
            "valkey://h:1?user=bob",
            "unix:///tmp/r.sock?user=bob",
            "unix:///tmp/r.sock?username=bob",
        ] {
            assert_eq!(server_login(dsn)?, bob, "{dsn}");
        }
        #[cfg(feature = "tls")]
        assert_eq!(server_login("rediss://bob@h:1/0")?, bob);
        assert_eq!(
            server_login("redis://bob:pw@h:1")?,
            (Some("bob".to_owned()), Some("pw".to_owned()))
        );
        assert_eq!(server_login("redis://h:1/0")?, (None, None));
        #[cfg(feature = "sentinel")]
        assert_eq!(login(sentinel("redis://bob@h:26379")?), bob);
        #[cfg(feature = "cluster")]
        assert_eq!(login(cluster_node("redis://h:1?username=bob")?), bob);
        Ok(())
    }

    #[cfg(feature = "sentinel")]
    #[test]
    fn sentinel_addresses_are_checked() -> Result<()> {
        for bad in [
            "",
            "http://h:1",
            "unix:///tmp/s.sock",
            "redis://",
            "redis://h:0",
            // A Sentinel has no databases: the primary's is the builder's `db`.
            "redis://h:26379/2",
            "redis://h:26379?db=2",
        ] {
            let err = crate::RedisSentinelCacheRepository::new([bad], "mymaster").unwrap_err();
            assert!(matches!(err, Error::InvalidDsn { .. }), "{bad}: {err}");
        }
        let err = crate::RedisSentinelCacheRepository::new(["redis://h:26379/2"], "m").unwrap_err();
        assert!(err.to_string().contains(".db(2)"), "{err}");
        assert!(crate::RedisSentinelCacheRepository::new(["redis://h:26379/0"], "m").is_ok());
        assert!(crate::RedisSentinelCacheRepository::new(Vec::<String>::new(), "m").is_err());
        let zero = crate::RedisSentinelCacheRepository::builder(["redis://h:26379"], "m")
            .connect_timeout(std::time::Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(zero.to_string().contains("connect timeout"), "{zero}");
        let sentinels: &[&str] = &["redis://h:26379"];
        assert!(crate::RedisSentinelCacheRepository::new(sentinels, "m").is_ok());
        assert!(crate::RedisSentinelCacheRepository::new(["redis://h:26379"], " ").is_err());
        let repository =
            crate::RedisSentinelCacheRepository::builder(["redis://:s3cret@h:26379"], "m")
                .password("p4ss")
                .build()?;
        let shown = format!("{repository:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p4ss"),
            "{shown}"
        );
        Ok(())
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn node_addresses_are_checked() {
        for bad in [
            "",
            "http://h:1",
            "unix:///tmp/s.sock",
            "redis://h:1/3",
            "redis://h:1?db=3",
            "redis://h:1/0?db=3",
            "redis://",
            "redis://h:0",
        ] {
            let err = crate::RedisClusterCacheRepository::new([bad]).unwrap_err();
            assert!(matches!(err, Error::InvalidDsn { .. }), "{bad}: {err}");
        }
        assert!(crate::RedisClusterCacheRepository::new(Vec::<String>::new()).is_err());
        // A slice of addresses, as `get_many` takes keys.
        let nodes: &[&str] = &["redis://a:7000", "redis://b:7000"];
        assert!(crate::RedisClusterCacheRepository::new(nodes).is_ok());
        let err = crate::RedisClusterCacheRepository::new(["redis://:s3cret@h:1/9"]).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(crate::RedisClusterCacheRepository::new(["redis://h:1", "redis://h:2/0"]).is_ok());
        let zero = crate::RedisClusterCacheRepository::builder(["redis://h:1"])
            .deadline(std::time::Duration::ZERO)
            .build()
            .unwrap_err();
        assert!(zero.to_string().contains("deadline"), "{zero}");
    }
}
