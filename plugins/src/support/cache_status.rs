//! What the cache did for a request: set by the gateway's cache hooks, sent by the `cache`
//! plugin as `Cache-Status` and `X-Cache-Status`, logged and counted by the gateway.

/// What a request's response was, from the cache's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh stored response.
    Hit,
    /// Nothing was stored: fetched from the upstream and stored.
    Miss,
    /// A stored response had expired: a new one was fetched and stored.
    Expired,
    /// A stored response had expired; the upstream confirmed it (304) and it was served.
    Revalidated,
    /// A stored response was served after expiry: while it is being refreshed, or because the
    /// upstream failed.
    Stale,
    /// Fetched from the upstream but not stored (`no-store`, `private`, `Set-Cookie`,
    /// `Authorization`, too large...).
    NotStored,
    /// The cache was not used for this request (method, upgrade, a gateway refusal).
    Bypass,
}

impl CacheStatus {
    /// Every status, in declaration order (`status as usize` indexes it).
    pub const ALL: [CacheStatus; 7] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Expired,
        CacheStatus::Revalidated,
        CacheStatus::Stale,
        CacheStatus::NotStored,
        CacheStatus::Bypass,
    ];

    /// The `X-Cache-Status` value (Kong's and nginx's words; a response that could not be
    /// stored counts as `BYPASS`, as in Kong).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Expired => "EXPIRED",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
            CacheStatus::NotStored | CacheStatus::Bypass => "BYPASS",
        }
    }
}
