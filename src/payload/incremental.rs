//! [`inspect`](super::inspect) for a payload that arrives in pieces and is
//! never held whole: the same checks (UTF-8, JSON well-formedness, nesting,
//! numbers and escapes a full parse would refuse) and the same summary, in
//! memory bounded by the nesting limit and the envelope field limit.
//!
//! Hand-written because the push parsers on crates.io buffer each string
//! whole (a 60 MB string would be held), and `actson` accepts lone
//! surrogates that serde_json, and so every sink, refuses. Numbers that could
//! be out of range are still judged by serde_json itself. A property test
//! holds this to agree with `inspect` on every input, however it is split.

use super::{
    LONG_NUMBER, MAX_NESTING, MAX_NUMBER_CHARS, PayloadError, PayloadSummary, SUMMARY_FIELD_MAX,
};

/// Validates a payload piece by piece and reads its summary on the way.
#[derive(Debug)]
pub struct IncrementalInspector {
    consumed: u64,
    utf8: Utf8Carry,
    state: State,
    /// Open containers, outermost first, each with the role of its
    /// members; its length is the nesting depth.
    open: Vec<(Container, Role)>,
    envelope: Envelope,
    /// What the string, number or value being read means to the envelope.
    role: Role,
    /// The decoded text of a string the envelope needs (bounded).
    text: Capture,
    /// The text of the number being read (bounded).
    number: Vec<u8>,
    number_needs_check: bool,
    number_digit_run: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value must come next; `first_in_array` also allows `]`.
    Value {
        first_in_array: bool,
    },
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the closer of the open container, or the end.
    AfterValue,
    String {
        key: bool,
        escape: Escape,
    },
    Number(NumberPart),
    Literal {
        rest: &'static [u8],
    },
    /// The top-level object is closed: only whitespace may follow.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After a backslash.
    Started,
    /// Inside `\uXXXX`: the hex digits read so far and their value.
    Unicode {
        digits: u8,
        value: u16,
    },
    /// A high surrogate was decoded: `\u` and a low surrogate must follow.
    NeedLowBackslash {
        high: u16,
    },
    NeedLowU {
        high: u16,
    },
    Low {
        high: u16,
        digits: u8,
        value: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberPart {
    Minus,
    Zero,
    Integer,
    FractionStart,
    Fraction,
    ExponentStart,
    ExponentSign,
    Exponent,
}

/// Where the value being read sits in Terra's envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Other,
    /// A key of the top-level object.
    EnvelopeKey,
    /// A key of the `user` or `new_user` object.
    UserKey(UserSlot),
    Type,
    ReferenceId,
    User(UserSlot),
    UserField(UserSlot, UserField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserSlot {
    User,
    NewUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserField {
    UserId,
    Provider,
    ReferenceId,
}

/// A top-level field's value as `inspect` sees it; the last of duplicate
/// keys wins, as in serde.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Field {
    #[default]
    Absent,
    Text(Captured),
    /// Present but not a string.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Captured {
    Text(String),
    /// Longer than [`SUMMARY_FIELD_MAX`]: an error if the summary uses it.
    TooLong,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserFields {
    user_id: Option<Captured>,
    provider: Option<Captured>,
    reference_id: Option<Captured>,
}

#[derive(Debug, Default)]
struct Envelope {
    kind: Field,
    reference_id: Field,
    /// `None`: no such key. A value that is not an object has no fields.
    user: Option<UserFields>,
    new_user: Option<UserFields>,
}

#[derive(Debug, Default)]
struct Capture {
    bytes: Vec<u8>,
    too_long: bool,
    /// Only keys and envelope strings are kept.
    active: bool,
}

impl Capture {
    fn start(&mut self, active: bool) {
        self.bytes.clear();
        self.too_long = false;
        self.active = active;
    }

    fn push(&mut self, bytes: &[u8]) {
        if !self.active || self.too_long {
            return;
        }
        if self.bytes.len() + bytes.len() > SUMMARY_FIELD_MAX {
            self.too_long = true;
            self.bytes.clear();
        } else {
            self.bytes.extend_from_slice(bytes);
        }
    }

    fn push_char(&mut self, c: char) {
        self.push(c.encode_utf8(&mut [0; 4]).as_bytes());
    }

    fn take(&mut self) -> Captured {
        if self.too_long {
            return Captured::TooLong;
        }
        // Valid UTF-8: raw bytes are checked by [`Utf8Carry`] and escapes decode to chars.
        Captured::Text(String::from_utf8_lossy(&self.bytes).into_owned())
    }
}

/// Checks UTF-8 across piece boundaries: a sequence split between pieces is
/// held (at most three bytes) until its end arrives.
#[derive(Debug, Default)]
struct Utf8Carry {
    pending: [u8; 4],
    len: usize,
}

impl Utf8Carry {
    /// `offset`: where `piece` starts in the payload.
    fn check(&mut self, piece: &[u8], offset: u64) -> Result<(), PayloadError> {
        let mut rest = piece;
        let mut rest_offset = offset;
        if self.len > 0 {
            // Complete the held sequence with at most three more bytes.
            let take = rest.len().min(4 - self.len);
            let mut joined = [0u8; 4];
            joined[..self.len].copy_from_slice(&self.pending[..self.len]);
            joined[self.len..self.len + take].copy_from_slice(&rest[..take]);
            let start = offset - self.len as u64;
            match std::str::from_utf8(&joined[..self.len + take]) {
                Ok(_) => {
                    self.len = 0;
                    rest = &rest[take..];
                    rest_offset += take as u64;
                }
                Err(e) if e.valid_up_to() > 0 => {
                    let used = e.valid_up_to() - self.len;
                    self.len = 0;
                    rest = &rest[used..];
                    rest_offset += used as u64;
                }
                Err(e) if e.error_len().is_none() => {
                    self.pending[self.len..self.len + take].copy_from_slice(&rest[..take]);
                    self.len += take;
                    return Ok(());
                }
                Err(_) => return Err(PayloadError::NotUtf8(start as usize)),
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &rest[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.len = tail.len();
                Ok(())
            }
            Err(e) => Err(PayloadError::NotUtf8(
                (rest_offset + e.valid_up_to() as u64) as usize,
            )),
        }
    }
}

impl Default for IncrementalInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl IncrementalInspector {
    pub fn new() -> Self {
        Self {
            consumed: 0,
            utf8: Utf8Carry::default(),
            state: State::Value {
                first_in_array: false,
            },
            open: Vec::new(),
            envelope: Envelope::default(),
            role: Role::Other,
            text: Capture::default(),
            number: Vec::new(),
            number_needs_check: false,
            number_digit_run: 0,
        }
    }

    /// Bytes fed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Checks the next piece of the payload.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), PayloadError> {
        self.utf8.check(piece, self.consumed)?;
        let mut at = 0;
        while at < piece.len() {
            at = self.step(piece, at)?;
        }
        self.consumed += piece.len() as u64;
        Ok(())
    }

    /// The summary as far as the payload has been read: what the archive's
    /// metadata can say before the end arrives.
    pub fn summary_so_far(&self) -> PayloadSummary {
        self.summary().unwrap_or_default()
    }

    /// The payload is complete: checks that it ended where a JSON object
    /// ends, and returns its summary.
    pub fn finish(mut self) -> Result<PayloadSummary, PayloadError> {
        if let State::Number(_) = self.state {
            // A number at the top level is refused before this; inside the
            // object one is always followed by a closer.
            self.end_number()?;
        }
        if self.utf8.len > 0 {
            return Err(PayloadError::NotUtf8(
                (self.consumed - self.utf8.len as u64) as usize,
            ));
        }
        if self.state != State::End {
            return Err(self.syntax("unexpected end of input"));
        }
        self.summary()
    }

    fn summary(&self) -> Result<PayloadSummary, PayloadError> {
        let text = |captured: &Captured, field: &'static str| match captured {
            Captured::Text(text) => Ok(text.clone()),
            Captured::TooLong => Err(PayloadError::EnvelopeFieldTooLong {
                field,
                limit: SUMMARY_FIELD_MAX,
            }),
        };
        let event_type = match &self.envelope.kind {
            Field::Text(kind) => text(kind, "type")?,
            _ => String::new(),
        };
        if event_type.is_empty() {
            return Err(PayloadError::MissingType);
        }
        let user = self
            .envelope
            .user
            .as_ref()
            .or(self.envelope.new_user.as_ref());
        let user_field = |pick: fn(&UserFields) -> &Option<Captured>, name| {
            user.and_then(|u| pick(u).as_ref())
                .map(|c| text(c, name))
                .transpose()
        };
        let reference_id = match user_field(|u| &u.reference_id, "user.reference_id")? {
            Some(reference) => Some(reference),
            None => match &self.envelope.reference_id {
                Field::Text(reference) => Some(text(reference, "reference_id")?),
                _ => None,
            },
        };
        Ok(PayloadSummary {
            event_type,
            user_id: user_field(|u| &u.user_id, "user.user_id")?,
            provider: user_field(|u| &u.provider, "user.provider")?,
            reference_id,
        })
    }

    fn syntax(&self, what: &str) -> PayloadError {
        PayloadError::NotJson(format!("{what} near byte {}", self.consumed))
    }

    /// Reads from `piece[at]`; returns where to continue.
    fn step(&mut self, piece: &[u8], at: usize) -> Result<usize, PayloadError> {
        if let State::String { key, escape } = self.state {
            return self.string(piece, at, key, escape);
        }
        let byte = piece[at];
        match self.state {
            State::Number(part) => {
                if self.number_byte(part, byte)? {
                    return Ok(at + 1);
                }
                // The byte after a number is read again as what follows it.
                self.end_number()?;
                return Ok(at);
            }
            State::Literal { rest } => {
                if rest.first() != Some(&byte) {
                    return Err(self.syntax("invalid literal"));
                }
                let rest = &rest[1..];
                if rest.is_empty() {
                    self.end_scalar(Field::Other);
                } else {
                    self.state = State::Literal { rest };
                }
                return Ok(at + 1);
            }
            _ => {}
        }
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            return Ok(at + 1);
        }
        match self.state {
            State::Value { first_in_array } => {
                if first_in_array && byte == b']' {
                    self.close(Container::Array)?;
                } else {
                    self.begin_value(byte)?;
                }
            }
            State::FirstKey | State::Key => match byte {
                b'"' => {
                    self.role = self.members_role();
                    self.text.start(self.role != Role::Other);
                    self.state = State::String {
                        key: true,
                        escape: Escape::None,
                    };
                }
                b'}' if self.state == State::FirstKey => self.close(Container::Object)?,
                _ => return Err(self.syntax("expected a key")),
            },
            State::Colon => {
                if byte != b':' {
                    return Err(self.syntax("expected ':'"));
                }
                self.state = State::Value {
                    first_in_array: false,
                };
            }
            State::AfterValue => match (byte, self.open.last().map(|(c, _)| *c)) {
                (b',', Some(Container::Object)) => {
                    self.role = self.members_role();
                    self.state = State::Key;
                }
                (b',', Some(Container::Array)) => {
                    self.role = self.members_role();
                    self.state = State::Value {
                        first_in_array: false,
                    };
                }
                (b'}', Some(Container::Object)) => self.close(Container::Object)?,
                (b']', Some(Container::Array)) => self.close(Container::Array)?,
                _ => return Err(self.syntax("expected ',' or a closing bracket")),
            },
            State::End => return Err(self.syntax("trailing characters")),
            State::String { .. } | State::Number(_) | State::Literal { .. } => {}
        }
        Ok(at + 1)
    }

    /// The role of the innermost open container's keys (or elements).
    fn members_role(&self) -> Role {
        self.open.last().map_or(Role::Other, |(_, role)| *role)
    }

    fn begin_value(&mut self, byte: u8) -> Result<(), PayloadError> {
        if self.open.is_empty() && byte != b'{' {
            return Err(PayloadError::NotJson("not a JSON object".into()));
        }
        match byte {
            b'{' | b'[' => {
                if self.open.len() >= MAX_NESTING {
                    return Err(PayloadError::TooDeep { limit: MAX_NESTING });
                }
                let container = if byte == b'{' {
                    Container::Object
                } else {
                    Container::Array
                };
                let members = self.enter(container);
                self.open.push((container, members));
                self.role = members;
                self.state = match container {
                    Container::Object => State::FirstKey,
                    Container::Array => State::Value {
                        first_in_array: true,
                    },
                };
            }
            b'"' => {
                let keep = matches!(
                    self.role,
                    Role::Type | Role::ReferenceId | Role::UserField(..)
                );
                self.text.start(keep);
                self.state = State::String {
                    key: false,
                    escape: Escape::None,
                };
            }
            b'-' | b'0'..=b'9' => {
                self.number.clear();
                self.number_needs_check = false;
                self.number_digit_run = 0;
                let part = match byte {
                    b'-' => NumberPart::Minus,
                    b'0' => NumberPart::Zero,
                    _ => NumberPart::Integer,
                };
                self.push_number_byte(byte)?;
                self.state = State::Number(part);
            }
            b't' => self.state = State::Literal { rest: b"rue" },
            b'f' => self.state = State::Literal { rest: b"alse" },
            b'n' => self.state = State::Literal { rest: b"ull" },
            _ => return Err(self.syntax("expected a value")),
        }
        Ok(())
    }

    /// A container opens as the value of the current role; returns the role
    /// of its members.
    fn enter(&mut self, container: Container) -> Role {
        match (self.role, container) {
            // The envelope itself.
            (_, Container::Object) if self.open.is_empty() => Role::EnvelopeKey,
            (Role::User(slot), Container::Object) => {
                *self.user_slot(slot) = Some(UserFields::default());
                Role::UserKey(slot)
            }
            (role, _) => {
                self.set_field(role, Field::Other);
                Role::Other
            }
        }
    }

    fn user_slot(&mut self, slot: UserSlot) -> &mut Option<UserFields> {
        match slot {
            UserSlot::User => &mut self.envelope.user,
            UserSlot::NewUser => &mut self.envelope.new_user,
        }
    }

    /// Records what a top-level or user field's value turned out to be.
    fn set_field(&mut self, role: Role, value: Field) {
        let as_user_field = |value: Field| match value {
            Field::Text(text) => Some(text),
            _ => None,
        };
        match role {
            Role::Type => self.envelope.kind = value,
            Role::ReferenceId => self.envelope.reference_id = value,
            Role::User(slot) => *self.user_slot(slot) = Some(UserFields::default()),
            Role::UserField(slot, field) => {
                if let Some(fields) = self.user_slot(slot) {
                    let target = match field {
                        UserField::UserId => &mut fields.user_id,
                        UserField::Provider => &mut fields.provider,
                        UserField::ReferenceId => &mut fields.reference_id,
                    };
                    *target = as_user_field(value);
                }
            }
            Role::Other | Role::EnvelopeKey | Role::UserKey(_) => {}
        }
    }

    /// A string, number or literal value ended.
    fn end_scalar(&mut self, value: Field) {
        self.set_field(self.role, value);
        self.after_value();
    }

    fn after_value(&mut self) {
        self.role = self.members_role();
        self.state = if self.open.is_empty() {
            State::End
        } else {
            State::AfterValue
        };
    }

    fn close(&mut self, container: Container) -> Result<(), PayloadError> {
        if self.open.pop().map(|(c, _)| c) != Some(container) {
            return Err(self.syntax("mismatched bracket"));
        }
        self.after_value();
        Ok(())
    }

    /// Reads string contents from `piece[at..]`.
    fn string(
        &mut self,
        piece: &[u8],
        mut at: usize,
        key: bool,
        mut escape: Escape,
    ) -> Result<usize, PayloadError> {
        while at < piece.len() {
            if escape == Escape::None {
                // Most of a payload is string contents: jump through them.
                let rest = &piece[at..];
                let run = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                let plain = &rest[..run];
                if plain.iter().any(|&b| b < 0x20) {
                    return Err(self.syntax("control character in a string"));
                }
                self.text.push(plain);
                at += run;
                let Some(&byte) = piece.get(at) else { break };
                at += 1;
                if byte == b'"' {
                    self.end_string(key)?;
                    return Ok(at);
                }
                escape = Escape::Started;
                continue;
            }
            let byte = piece[at];
            at += 1;
            escape = self.escape_byte(escape, byte)?;
        }
        self.state = State::String { key, escape };
        Ok(at)
    }

    fn escape_byte(&mut self, escape: Escape, byte: u8) -> Result<Escape, PayloadError> {
        let hex = |byte: u8| (byte as char).to_digit(16).map(|d| d as u16);
        let next = match escape {
            Escape::None => Escape::None,
            Escape::Started => {
                let decoded = match byte {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        return Ok(Escape::Unicode {
                            digits: 0,
                            value: 0,
                        });
                    }
                    _ => return Err(self.syntax("invalid escape")),
                };
                self.text.push_char(decoded);
                Escape::None
            }
            Escape::Unicode { digits, value } => {
                let value = value << 4 | hex(byte).ok_or_else(|| self.syntax("invalid escape"))?;
                if digits < 3 {
                    return Ok(Escape::Unicode {
                        digits: digits + 1,
                        value,
                    });
                }
                match value {
                    0xD800..=0xDBFF => Escape::NeedLowBackslash { high: value },
                    0xDC00..=0xDFFF => return Err(self.syntax("lone surrogate in an escape")),
                    _ => {
                        let c = char::from_u32(u32::from(value))
                            .ok_or_else(|| self.syntax("invalid escape"))?;
                        self.text.push_char(c);
                        Escape::None
                    }
                }
            }
            Escape::NeedLowBackslash { high } if byte == b'\\' => Escape::NeedLowU { high },
            Escape::NeedLowU { high } if byte == b'u' => Escape::Low {
                high,
                digits: 0,
                value: 0,
            },
            Escape::NeedLowBackslash { .. } | Escape::NeedLowU { .. } => {
                return Err(self.syntax("lone surrogate in an escape"));
            }
            Escape::Low {
                high,
                digits,
                value,
            } => {
                let value = value << 4 | hex(byte).ok_or_else(|| self.syntax("invalid escape"))?;
                if digits < 3 {
                    return Ok(Escape::Low {
                        high,
                        digits: digits + 1,
                        value,
                    });
                }
                if !(0xDC00..=0xDFFF).contains(&value) {
                    return Err(self.syntax("lone surrogate in an escape"));
                }
                let code =
                    0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(value) - 0xDC00);
                let c = char::from_u32(code).ok_or_else(|| self.syntax("invalid escape"))?;
                self.text.push_char(c);
                Escape::None
            }
        };
        Ok(next)
    }

    fn end_string(&mut self, key: bool) -> Result<(), PayloadError> {
        if !key {
            let value = match self.role {
                Role::Type | Role::ReferenceId | Role::UserField(..) => {
                    Field::Text(self.text.take())
                }
                _ => Field::Other,
            };
            self.end_scalar(value);
            return Ok(());
        }
        let name: &[u8] = if self.text.too_long {
            b""
        } else {
            &self.text.bytes
        };
        self.role = match (self.role, name) {
            (Role::EnvelopeKey, b"type") => Role::Type,
            (Role::EnvelopeKey, b"reference_id") => Role::ReferenceId,
            (Role::EnvelopeKey, b"user") => Role::User(UserSlot::User),
            (Role::EnvelopeKey, b"new_user") => Role::User(UserSlot::NewUser),
            (Role::UserKey(slot), b"user_id") => Role::UserField(slot, UserField::UserId),
            (Role::UserKey(slot), b"provider") => Role::UserField(slot, UserField::Provider),
            (Role::UserKey(slot), b"reference_id") => Role::UserField(slot, UserField::ReferenceId),
            _ => Role::Other,
        };
        self.state = State::Colon;
        Ok(())
    }

    /// Whether `byte` continues the number.
    fn number_byte(&mut self, part: NumberPart, byte: u8) -> Result<bool, PayloadError> {
        use NumberPart::*;
        let next = match (part, byte) {
            (Minus, b'0') => Zero,
            (Minus, b'1'..=b'9') => Integer,
            (Integer, b'0'..=b'9') => Integer,
            (Zero | Integer, b'.') => FractionStart,
            (FractionStart | Fraction, b'0'..=b'9') => Fraction,
            (Zero | Integer | Fraction, b'e' | b'E') => ExponentStart,
            (ExponentStart, b'+' | b'-') => ExponentSign,
            (ExponentStart | ExponentSign | Exponent, b'0'..=b'9') => Exponent,
            (Minus | FractionStart | ExponentStart | ExponentSign, _) => {
                return Err(self.syntax("invalid number"));
            }
            _ => return Ok(false),
        };
        self.push_number_byte(byte)?;
        self.state = State::Number(next);
        Ok(true)
    }

    fn push_number_byte(&mut self, byte: u8) -> Result<(), PayloadError> {
        if self.number.len() >= MAX_NUMBER_CHARS {
            return Err(PayloadError::NumberTooLong {
                limit: MAX_NUMBER_CHARS,
            });
        }
        // The same test as the whole-payload scan: an exponent, or a long
        // run of digits, may be out of an f64's range.
        let after_digit = self.number_digit_run > 0;
        if byte.is_ascii_digit() {
            self.number_digit_run += 1;
            if self.number_digit_run >= LONG_NUMBER {
                self.number_needs_check = true;
            }
        } else {
            if matches!(byte, b'e' | b'E') && after_digit {
                self.number_needs_check = true;
            }
            self.number_digit_run = 0;
        }
        self.number.push(byte);
        Ok(())
    }

    fn end_number(&mut self) -> Result<(), PayloadError> {
        if let State::Number(
            NumberPart::Minus
            | NumberPart::FractionStart
            | NumberPart::ExponentStart
            | NumberPart::ExponentSign,
        ) = self.state
        {
            return Err(self.syntax("invalid number"));
        }
        if self.number_needs_check && serde_json::from_slice::<f64>(&self.number).is_err() {
            return Err(self.syntax("number out of range"));
        }
        self.end_scalar(Field::Other);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::inspect;
    use super::super::tests::deep;
    use super::*;
    use proptest::prelude::*;

    fn in_pieces(body: &[u8], cuts: &[usize]) -> Result<PayloadSummary, PayloadError> {
        let mut inspector = IncrementalInspector::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.min(body.len()).max(start);
            inspector.feed(&body[start..cut])?;
            start = cut;
        }
        inspector.feed(&body[start..])?;
        inspector.finish()
    }

    fn agrees(body: &[u8], cuts: &[usize]) {
        let whole = inspect(body);
        let pieces = in_pieces(body, cuts);
        assert_eq!(
            whole.as_ref().ok(),
            pieces.as_ref().ok(),
            "{:?} cut at {cuts:?}: whole {whole:?}, pieces {pieces:?}",
            String::from_utf8_lossy(body)
        );
        let byte_at_a_time: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            whole.ok(),
            in_pieces(body, &byte_at_a_time).ok(),
            "{:?} byte at a time",
            String::from_utf8_lossy(body)
        );
    }

    #[test]
    fn agrees_with_inspect_on_every_fixture_split_anywhere() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/terra");
        for entry in std::fs::read_dir(dir).expect("fixtures present") {
            let path = entry.expect("readable dir").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let body = std::fs::read(&path).expect("readable fixture");
            for cut in (0..body.len()).step_by(7) {
                agrees(&body, &[cut, cut + 1, cut + 5]);
            }
        }
    }

    #[test]
    fn agrees_with_inspect_on_envelope_corner_cases() {
        for body in [
            r#"{"type":"a","type":5}"#,
            r#"{"type":5,"type":"a"}"#,
            r#"{"type":""}"#,
            r#"{"type":"s","user":null,"new_user":{"user_id":"n"}}"#,
            r#"{"type":"s","new_user":{"user_id":"n"}}"#,
            r#"{"type":"s","new_user":{"user_id":"n"},"user":{"provider":"P"}}"#,
            r#"{"type":"s","user":{"user_id":"a","user_id":7}}"#,
            r#"{"type":"s","user":{"user_id":7,"user_id":"b"}}"#,
            r#"{"type":"s","user":{"user_id":{"x":"y"},"reference_id":"r"}}"#,
            r#"{"type":"s","user":{"nested":{"user_id":"deep"}},"reference_id":"top"}"#,
            r#"{"type":"s","user":[{"user_id":"in-array"}]}"#,
            r#"{"type":"s","user":{"user_id":"u"},"user":{"provider":"p"}}"#,
            r#"{"data":[{"type":"inner"}],"type":"outer","reference_id":["x"]}"#,
            r#"{"ty\u0070e":"esc\u00e9\ud83d\ude00\n","user":{"user_\u0069d":"\/u"}}"#,
            r#" { "type" : "ws" , "data" : [ 1 , -0.5e-3 , true , false , null , { } , [ ] ] } "#,
            r#"{"type":"n","data":[1e400]}"#,
            r#"{"type":"n","data":[1e-400, -0, 0.0, 12345678901234567890123]}"#,
            r#"{"type":"n","data":[01]}"#,
            r#"{"type":"n","data":[1.]}"#,
            r#"{"type":"n","data":[-]}"#,
            r#"{"type":"n","data":[.5]}"#,
            r#"{"type":"n","data":[+1]}"#,
            r#"{"type":"s","data":["\ud800"]}"#,
            r#"{"type":"s","data":["\udc00"]}"#,
            r#"{"type":"s","data":["\ud800\u0041"]}"#,
            r#"{"type":"s","data":["\ud800x"]}"#,
            r#"{"type":"s","data":["\x"]}"#,
            "{\"type\":\"s\",\"data\":[\"tab\there\"]}",
            "{\"type\":\"s\",\"data\":[\"unit\u{1f}sep\"]}",
            "{\"type\":\"s\",\"data\":[\"nul\u{0}\"]}",
            "{\"type\":\"s\",\"data\":[\"del\u{7f}\"]}",
            r#"{"type":"s",}"#,
            r#"{"type":"s"}}"#,
            r#"{"type":"s"]"#,
            r#"{"type":"s" "x":1}"#,
            r#"{"type":"s","x" 1}"#,
            r#"{"type":"s","x":tru}"#,
            r#"{"type":"s","x":nul}"#,
            r#"{"type":"s"} {}"#,
            r#"["type"]"#,
            r#""type""#,
            r#"{"type":"s""#,
            r#"{"type":"s","data":[1,]}"#,
            r#"{"type":"s","data":[,1]}"#,
            "",
            "   ",
            "{}",
        ] {
            agrees(body.as_bytes(), &[body.len() / 2]);
        }
    }

    #[test]
    fn agrees_with_inspect_on_limits() {
        for levels in [MAX_NESTING - 2, MAX_NESTING - 1, MAX_NESTING, 5_000] {
            agrees(deep(levels).as_bytes(), &[3]);
        }
        let long_number =
            |digits: usize| format!(r#"{{"type":"n","data":[{}]}}"#, "9".repeat(digits));
        for digits in [
            LONG_NUMBER - 1,
            LONG_NUMBER,
            308,
            309,
            310,
            MAX_NUMBER_CHARS,
            MAX_NUMBER_CHARS + 1,
        ] {
            agrees(long_number(digits).as_bytes(), &[20, 200]);
        }
        let fraction = format!(
            r#"{{"type":"n","data":[0.{}1]}}"#,
            "0".repeat(MAX_NUMBER_CHARS - 3)
        );
        agrees(fraction.as_bytes(), &[100]);
        let long_type = |len: usize| format!(r#"{{"type":"{}"}}"#, "t".repeat(len));
        for len in [SUMMARY_FIELD_MAX, SUMMARY_FIELD_MAX + 1] {
            agrees(long_type(len).as_bytes(), &[10, 1000]);
        }
        // An overlong field nobody uses is no error.
        let unused = format!(
            r#"{{"type":"t","user":{{"user_id":"u"}},"new_user":{{"user_id":"{}"}}}}"#,
            "n".repeat(SUMMARY_FIELD_MAX + 1)
        );
        assert!(in_pieces(unused.as_bytes(), &[]).is_ok());
        agrees(unused.as_bytes(), &[50]);
    }

    #[test]
    fn utf8_is_checked_across_pieces() {
        let mut body = r#"{"type":"s","data":["caf"#.as_bytes().to_vec();
        body.extend("é😀".as_bytes());
        body.extend(br#""]}"#);
        for cut in 0..body.len() {
            agrees(&body, &[cut, cut + 1, cut + 2]);
        }
        let mut broken = body.clone();
        let at = broken.len() - 5;
        broken[at] = 0xff;
        for cut in 0..broken.len() {
            assert!(in_pieces(&broken, &[cut]).is_err(), "cut at {cut}");
        }
        let truncated = &body[..body.len() - 5];
        assert!(in_pieces(truncated, &[]).is_err());
    }

    /// JSON-ish text: mostly valid Terra-shaped payloads, with bytes that
    /// break them.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop_oneof![
            Just(r#""type""#.to_owned()),
            Just(r#""user""#.to_owned()),
            Just(r#""new_user""#.to_owned()),
            Just(r#""user_id""#.to_owned()),
            Just(r#""provider""#.to_owned()),
            Just(r#""reference_id""#.to_owned()),
            Just(r#""\ud83d\ude00""#.to_owned()),
            Just(r#""\ud800""#.to_owned()),
            Just("\"é\"".to_owned()),
            Just("1e5".to_owned()),
            Just("-0.25".to_owned()),
            Just("1e999".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            "[a-z]{0,6}".prop_map(|s| format!("\"{s}\"")),
            (0u32..100_000).prop_map(|n| n.to_string()),
        ];
        let token = prop_oneof![
            4 => atom,
            2 => Just("{".to_owned()),
            2 => Just("}".to_owned()),
            1 => Just("[".to_owned()),
            1 => Just("]".to_owned()),
            3 => Just(":".to_owned()),
            3 => Just(",".to_owned()),
            1 => Just(" ".to_owned()),
            1 => any::<u8>().prop_map(|b| String::from_utf8_lossy(&[b]).into_owned()),
        ];
        prop::collection::vec(token, 0..40).prop_map(|tokens| {
            let mut text = String::from(r#"{"type":"t","#);
            text.extend(tokens);
            text.into_bytes()
        })
    }

    /// Valid payloads built as values, so the agreement on acceptance is
    /// tested, not only on refusal.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("user_id".to_owned()),
                        Just("provider".to_owned()),
                        Just("reference_id".to_owned()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        prop::collection::vec(
            (
                prop_oneof![
                    Just("type".to_owned()),
                    Just("user".to_owned()),
                    Just("new_user".to_owned()),
                    Just("reference_id".to_owned()),
                    Just("data".to_owned()),
                ],
                value,
            ),
            0..6,
        )
        .prop_map(|fields| {
            let mut text = String::from("{");
            for (i, (key, value)) in fields.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&serde_json::to_string(key).unwrap_or_default());
                text.push(':');
                text.push_str(&value.to_string());
            }
            text.push('}');
            text.into_bytes()
        })
    }

    proptest! {
        #[test]
        fn agrees_with_inspect_on_arbitrary_text(body in jsonish(), cuts in prop::collection::vec(0usize..200, 0..4)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            agrees(&body, &cuts);
        }

        #[test]
        fn agrees_with_inspect_on_arbitrary_payloads(body in payload(), cuts in prop::collection::vec(0usize..400, 0..4)) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            agrees(&body, &cuts);
        }
    }
}
