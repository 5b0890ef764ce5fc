// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The case-insensitive [HeaderName] together with the case-sensitive name. The default
    /// parses the case-sensitive name, which copies it into a new buffer.
    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName), header::InvalidHeaderName>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name = HeaderName::from_bytes(case_header_name.as_slice())?;
        Ok((header_name, case_header_name))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }

    /// A name already in canonical lower case becomes a [HeaderName] that refers to the static
    /// string, so neither name is copied (and cloning either is free); any other name is parsed
    /// as by the default.
    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName), header::InvalidHeaderName> {
        let header_name = if is_lowercase_token(self) {
            HeaderName::from_static(self)
        } else {
            HeaderName::from_bytes(self.as_bytes())?
        };
        Ok((header_name, CaseHeaderName(Bytes::from_static(self.as_bytes()))))
    }
}

/// Whether `name` is a header name that [HeaderName::from_static] accepts: lower-case letters,
/// digits and `-` (a subset of the token characters it allows), neither empty nor too long.
fn is_lowercase_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 1 << 16
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }

    #[test]
    fn test_static_header_names() {
        let (name, case) = "x-forwarded-for".into_header_names().unwrap();
        assert_eq!(name.as_str(), "x-forwarded-for");
        assert_eq!(case.as_slice(), b"x-forwarded-for");
        // a standard header keeps its standard representation
        let (name, case) = "host".into_header_names().unwrap();
        assert_eq!(name, header::HOST);
        assert_eq!(case.as_slice(), b"host");
        // other names are parsed, keeping their case
        let (name, case) = "X-Custom_Name".into_header_names().unwrap();
        assert_eq!(name.as_str(), "x-custom_name");
        assert_eq!(case.as_slice(), b"X-Custom_Name");
        assert!("bad name".into_header_names().is_err());
        assert!("".into_header_names().is_err());
    }
}
