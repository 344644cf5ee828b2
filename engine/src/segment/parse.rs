//! Parser of the segment language: a small lexer with byte positions under a
//! hand-written recursive descent, producing an [`Expr`] or a [`ParseError`]
//! that names the line, the column, what was expected and what was found.
//! Owns the grammar and its error messages; printing lives in `segment::print`.
//!
//! ```text
//! expr     := or
//! or       := and ( OR and )*
//! and      := unary ( AND unary )*
//! unary    := NOT unary | primary
//! primary  := '(' expr ')'
//!           | did
//!           | SEGMENT '(' string ')'
//!           | name cmp literal                       -- = != <> < <= > >=
//!           | name [NOT] IN '(' literal (',' literal)* ')'
//!           | name BETWEEN literal AND literal
//!           | name                                   -- a boolean tag
//! did      := DID '(' name [WHERE name '=' string (AND name '=' string)*] ')'
//!             [cmp integer] [window]                 -- cmp: = < <= > >= (not != or <>)
//! window   := IN LAST integer DAY[S]                 -- at least 1 day
//!           | BETWEEN 'YYYY-MM-DD' AND 'YYYY-MM-DD'  -- valid dates, from <= to
//! literal  := number | string                        -- number: [-]digits[.digits]
//! string   := '...'                                  -- '' is a quote inside
//! name     := [A-Za-z_][A-Za-z0-9_]* | "..."         -- "" is a quote inside
//! ```
//!
//! Keywords are case-insensitive. `AND`, `OR`, `NOT`, `IN` and `BETWEEN` are
//! reserved: as names they must be double-quoted (`"in" = 3`), as must any name
//! that is not a plain ASCII identifier (`"会员等级" = 'vip'`). `did` and
//! `segment` are keywords only when a `(` follows. Whitespace (Unicode) and
//! newlines are free, `--` starts a comment running to the end of the line.
//!
//! Every `AND`/`OR` chain without parentheses becomes one node
//! (`a AND b AND c` is `And { args: [a, b, c] }`); a parenthesised group stays
//! its own node, so `(a AND b) AND c` is `And { args: [And { args: [a, b] }, c] }`
//! and the printer puts those parentheses back.

use std::fmt::{self, Write as _};

use chrono::NaiveDate;

use super::ast::{Cmp, Did, Expr, Literal, Window};

/// How deep parentheses and `NOT`s may nest, so a hostile input cannot
/// overflow the stack, and so that the JSON form of any accepted
/// expression reads back: one level of parentheses holds up to an `OR` of
/// `AND`s, four levels of JSON (object, array, object, array), and JSON
/// readers stop at 128 levels (serde_json does).
const MAX_DEPTH: u32 = 24;

/// Words that are never bare names (they would be ambiguous there).
const RESERVED: [&str; 5] = ["AND", "OR", "NOT", "IN", "BETWEEN"];

/// Every keyword; the printer double-quotes a name equal to any of them.
const KEYWORDS: [&str; 11] = [
    "AND", "OR", "NOT", "IN", "BETWEEN", "DID", "SEGMENT", "WHERE", "LAST", "DAY", "DAYS",
];

const EXPECTED_OPERAND: &str = "a name, NOT, `(`, did(...) or segment(...)";
const EXPECTED_LITERAL: &str = "a number or a quoted string";
const EXPECTED_TOKEN: &str = "a name, a number, a quoted string, an operator or a parenthesis";
const EXPECTED_COUNT_OP: &str = "`=`, `<`, `<=`, `>` or `>=` (a did count cannot use `!=` or `<>`)";

/// Whether `name` prints bare: a plain ASCII identifier that is no keyword.
/// Any other name is written double-quoted.
pub(super) fn is_bare_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(name))
}

/// Parses a segment expression.
///
/// ```
/// use quiver_engine::segment::{parse, Cmp, Expr, Literal};
/// let e = parse("member_level = 'vip' AND skincare_lover").unwrap();
/// assert_eq!(
///     e,
///     Expr::And {
///         args: vec![
///             Expr::Compare {
///                 field: "member_level".into(),
///                 cmp: Cmp::Eq,
///                 value: Literal::String("vip".into()),
///             },
///             Expr::Tag { name: "skincare_lover".into() },
///         ],
///     }
/// );
/// let err = parse("total_spend >= )").unwrap_err();
/// assert_eq!((err.line, err.column), (1, 16));
/// ```
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut parser = Parser {
        src: text,
        lexer: Lexer {
            src: text,
            pos: 0,
            last_end: 0,
        },
        peeked: None,
        depth: 0,
    };
    let expr = parser.or()?;
    let tok = parser.bump()?;
    match tok.tok {
        Tok::Eof => Ok(expr),
        _ => Err(parser.unexpected(&tok, "AND, OR or end of input")),
    }
}

/// A segment expression that does not parse: where, what was expected there
/// and what was found. `Display` renders the message, the source line and a
/// caret under the column:
///
/// ```text
/// line 2, column 22: expected a number or a quoted string, found `)`
///     AND total_spend >= )
///                        ^
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters (a tab counts as one).
    pub column: u32,
    /// Byte offset of the position in the whole text.
    pub offset: usize,
    /// What the grammar allows there: "a number or a quoted string".
    pub expected: String,
    /// What is there: the source text in backticks (`` `)` ``), or "end of input".
    pub found: String,
    /// The source line holding the position, without its line break.
    pub source_line: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: expected {}, found {}\n  {}\n  ",
            self.line, self.column, self.expected, self.found, self.source_line
        )?;
        // Mirror tabs so the caret lines up however the terminal renders them.
        let before = usize::try_from(self.column.saturating_sub(1)).unwrap_or(usize::MAX);
        let mut padded = 0;
        for c in self.source_line.chars().take(before) {
            f.write_char(if c == '\t' { '\t' } else { ' ' })?;
            padded += 1;
        }
        for _ in padded..before {
            f.write_char(' ')?;
        }
        f.write_char('^')
    }
}

impl std::error::Error for ParseError {}

/// Builds an error at byte `offset` of `src`, working out line and column.
fn error_at(
    src: &str,
    offset: usize,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> ParseError {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let (before, after) = src.split_at(offset);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (_, line_head) = before.split_at(line_start);
    let line_tail = after.split('\n').next().unwrap_or("");
    let source_line = format!("{line_head}{line_tail}");
    let source_line = source_line.strip_suffix('\r').unwrap_or(&source_line);
    let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    ParseError {
        line: to_u32(before.matches('\n').count() + 1),
        column: to_u32(line_head.chars().count() + 1),
        offset,
        expected: expected.into(),
        found: found.into(),
        source_line: source_line.to_string(),
    }
}

/// Source text as shown after "found": in backticks, control characters
/// escaped (so the message stays on one line), long text cut short.
fn describe(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut out = String::from("`");
    for (i, c) in text.chars().enumerate() {
        if i == MAX_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

/// A token's kind and payload.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word: a name or a keyword (compared case-insensitively).
    Word(String),
    /// A double-quoted name, unescaped; never a keyword.
    QuotedName(String),
    /// A single-quoted string, unescaped.
    Str(String),
    /// A number; its text is the token's source slice.
    Number,
    LParen,
    RParen,
    Comma,
    Op(Cmp),
    /// End of input; positioned right after the last token.
    Eof,
}

/// A token and its byte range in the source.
#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

impl Token {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// Splits the source into tokens on demand, so that a parse error earlier in
/// the text is reported before a bad character later in it.
struct Lexer<'a> {
    src: &'a str,
    /// Next byte to read; always on a char boundary.
    pos: usize,
    /// End of the last token read (where "end of input" is reported).
    last_end: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn skip_trivia(&mut self) {
        loop {
            let rest = self.rest();
            if rest.starts_with("--") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(c) = rest.chars().next().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            } else {
                return;
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_trivia();
        let start = self.pos;
        let rest = self.rest();
        let mut chars = rest.chars();
        let Some(first) = chars.next() else {
            return Ok(Token {
                tok: Tok::Eof,
                start: self.last_end,
                end: self.last_end,
            });
        };
        let second = chars.next();
        let (tok, len) = match first {
            '(' => (Tok::LParen, 1),
            ')' => (Tok::RParen, 1),
            ',' => (Tok::Comma, 1),
            '=' => (Tok::Op(Cmp::Eq), 1),
            '!' if second == Some('=') => (Tok::Op(Cmp::Ne), 2),
            '<' => match second {
                Some('=') => (Tok::Op(Cmp::Le), 2),
                Some('>') => (Tok::Op(Cmp::Ne), 2),
                _ => (Tok::Op(Cmp::Lt), 1),
            },
            '>' => match second {
                Some('=') => (Tok::Op(Cmp::Ge), 2),
                _ => (Tok::Op(Cmp::Gt), 1),
            },
            '\'' => {
                let (text, len) = self.quoted(start, '\'', "string")?;
                (Tok::Str(text), len)
            }
            '"' => {
                let (text, len) = self.quoted(start, '"', "name")?;
                if text.is_empty() {
                    return Err(error_at(self.src, start, "a non-empty name", "`\"\"`"));
                }
                (Tok::QuotedName(text), len)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (Tok::Word(rest.get(..len).unwrap_or("").to_string()), len)
            }
            c if c.is_ascii_digit() || (c == '-' && second.is_some_and(|d| d.is_ascii_digit())) => {
                (Tok::Number, number_len(rest))
            }
            c => {
                return Err(error_at(
                    self.src,
                    start,
                    EXPECTED_TOKEN,
                    describe(c.encode_utf8(&mut [0; 4])),
                ));
            }
        };
        self.pos = start + len;
        self.last_end = self.pos;
        Ok(Token {
            tok,
            start,
            end: self.pos,
        })
    }

    /// Reads a `q`-quoted text starting at `start` (on the opening quote),
    /// with a doubled quote standing for one. Returns the text and its length
    /// in the source; an unterminated one is reported at its opening quote.
    fn quoted(&self, start: usize, q: char, what: &str) -> Result<(String, usize), ParseError> {
        let rest = self.rest();
        let mut text = String::new();
        let mut chars = rest.char_indices().skip(1).peekable();
        while let Some((i, c)) = chars.next() {
            if c != q {
                text.push(c);
            } else if chars.peek().is_some_and(|&(_, d)| d == q) {
                chars.next();
                text.push(q);
            } else {
                return Ok((text, i + c.len_utf8()));
            }
        }
        Err(error_at(
            self.src,
            start,
            format!("a closing `{q}` for the {what} starting here"),
            "end of input",
        ))
    }
}

/// Length of the number at the start of `s`: `-`? digits (`.` digits)?.
fn number_len(s: &str) -> usize {
    let b = s.as_bytes();
    let digits_from = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = digits_from(usize::from(b.first() == Some(&b'-')));
    if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i = digits_from(i + 1);
    }
    i
}

/// Recursive descent with one token of lookahead.
struct Parser<'a> {
    src: &'a str,
    lexer: Lexer<'a>,
    peeked: Option<Token>,
    /// Current nesting of parentheses and `NOT`s.
    depth: u32,
}

impl Parser<'_> {
    fn peek(&mut self) -> Result<&Token, ParseError> {
        let tok = match self.peeked.take() {
            Some(tok) => tok,
            None => self.lexer.next_token()?,
        };
        Ok(self.peeked.insert(tok))
    }

    fn bump(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(tok) => Ok(tok),
            None => self.lexer.next_token(),
        }
    }

    /// The error for finding `tok` where `expected` should be.
    fn unexpected(&self, tok: &Token, expected: impl Into<String>) -> ParseError {
        let found = match tok.tok {
            Tok::Eof => "end of input".to_string(),
            _ => describe(self.src.get(tok.start..tok.end).unwrap_or("")),
        };
        error_at(self.src, tok.start, expected, found)
    }

    /// Consumes the keyword `kw` if it comes next.
    fn eat_kw(&mut self, kw: &str) -> Result<bool, ParseError> {
        let found = self.peek()?.is_kw(kw);
        if found {
            self.bump()?;
        }
        Ok(found)
    }

    /// Consumes the keyword `kw`, or fails saying `expected`.
    fn expect_kw(&mut self, kw: &str, expected: &str) -> Result<Token, ParseError> {
        let tok = self.bump()?;
        if tok.is_kw(kw) {
            Ok(tok)
        } else {
            Err(self.unexpected(&tok, expected))
        }
    }

    /// Consumes a token of kind `want` (a payload-free kind), or fails saying `expected`.
    fn expect(&mut self, want: &Tok, expected: &str) -> Result<Token, ParseError> {
        let tok = self.bump()?;
        if &tok.tok == want {
            Ok(tok)
        } else {
            Err(self.unexpected(&tok, expected))
        }
    }

    /// Counts one level of nesting opened by `tok`.
    fn enter(&mut self, tok: &Token) -> Result<(), ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.unexpected(
                tok,
                format!("at most {MAX_DEPTH} levels of nested parentheses and NOTs"),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut args = vec![self.and()?];
        while self.eat_kw("OR")? {
            args.push(self.and()?);
        }
        Ok(match <[Expr; 1]>::try_from(args) {
            Ok([one]) => one,
            Err(args) => Expr::Or { args },
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut args = vec![self.unary()?];
        while self.eat_kw("AND")? {
            args.push(self.unary()?);
        }
        Ok(match <[Expr; 1]>::try_from(args) {
            Ok([one]) => one,
            Err(args) => Expr::And { args },
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if !self.peek()?.is_kw("NOT") {
            return self.primary();
        }
        let not = self.bump()?;
        self.enter(&not)?;
        let arg = self.unary()?;
        self.depth -= 1;
        Ok(Expr::Not { arg: Box::new(arg) })
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let tok = self.bump()?;
        match &tok.tok {
            Tok::LParen => {
                self.enter(&tok)?;
                let expr = self.or()?;
                self.expect(&Tok::RParen, "AND, OR or `)`")?;
                self.depth -= 1;
                Ok(expr)
            }
            Tok::Word(w) if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(w)) => {
                Err(self.unexpected(&tok, EXPECTED_OPERAND))
            }
            Tok::Word(w) => {
                let name = w.clone();
                let call = self.peek()?.tok == Tok::LParen;
                if call && name.eq_ignore_ascii_case("did") {
                    self.bump()?;
                    self.did().map(Expr::Did)
                } else if call && name.eq_ignore_ascii_case("segment") {
                    self.bump()?;
                    let name = self.string("a quoted segment name")?;
                    self.expect(&Tok::RParen, "`)`")?;
                    Ok(Expr::Segment { name })
                } else {
                    self.after_name(name)
                }
            }
            Tok::QuotedName(name) => {
                let name = name.clone();
                self.after_name(name)
            }
            _ => Err(self.unexpected(&tok, EXPECTED_OPERAND)),
        }
    }

    /// What follows a name: a comparison, `[NOT] IN`, `BETWEEN`, or nothing (a tag).
    fn after_name(&mut self, field: String) -> Result<Expr, ParseError> {
        let next = self.peek()?;
        if let Tok::Op(cmp) = next.tok {
            self.bump()?;
            let value = self.literal()?;
            return Ok(Expr::Compare { field, cmp, value });
        }
        let negated = next.is_kw("NOT");
        if negated || next.is_kw("IN") {
            self.bump()?;
            if negated {
                self.expect_kw("IN", "IN (after NOT)")?;
            }
            let values = self.literal_list()?;
            return Ok(Expr::In {
                field,
                values,
                negated,
            });
        }
        if self.eat_kw("BETWEEN")? {
            let low = self.literal()?;
            self.expect_kw("AND", "AND")?;
            let high = self.literal()?;
            return Ok(Expr::Between { field, low, high });
        }
        Ok(Expr::Tag { name: field })
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        let tok = self.bump()?;
        match tok.tok {
            Tok::Str(s) => Ok(Literal::String(s)),
            Tok::Number => {
                let text = self.src.get(tok.start..tok.end).unwrap_or("");
                match text.parse::<f64>() {
                    Ok(n) if n.is_finite() => Ok(Literal::Number(n)),
                    _ => Err(self.unexpected(&tok, "a number within the range of a 64-bit float")),
                }
            }
            _ => Err(self.unexpected(&tok, EXPECTED_LITERAL)),
        }
    }

    /// `'(' literal (',' literal)* ')'`.
    fn literal_list(&mut self) -> Result<Vec<Literal>, ParseError> {
        self.expect(&Tok::LParen, "`(` and a list of values")?;
        let mut values = vec![self.literal()?];
        loop {
            let tok = self.bump()?;
            match tok.tok {
                Tok::Comma => values.push(self.literal()?),
                Tok::RParen => return Ok(values),
                _ => return Err(self.unexpected(&tok, "`,` or `)`")),
            }
        }
    }

    /// A bare (not reserved) or double-quoted name.
    fn name(&mut self, expected: &str) -> Result<String, ParseError> {
        let tok = self.bump()?;
        match tok.tok {
            Tok::Word(w) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&w)) => Ok(w),
            Tok::QuotedName(name) => Ok(name),
            _ => Err(self.unexpected(&tok, expected)),
        }
    }

    fn string(&mut self, expected: &str) -> Result<String, ParseError> {
        let tok = self.bump()?;
        match tok.tok {
            Tok::Str(s) => Ok(s),
            _ => Err(self.unexpected(&tok, expected)),
        }
    }

    /// A non-negative integer token no larger than `max`, with its token.
    fn integer(&mut self, expected: &str, max: u64) -> Result<(u64, Token), ParseError> {
        let tok = self.bump()?;
        let text = self.src.get(tok.start..tok.end).unwrap_or("");
        let value = match tok.tok {
            Tok::Number if text.bytes().all(|b| b.is_ascii_digit()) => text.parse::<u64>().ok(),
            _ => None,
        };
        match value {
            Some(n) if n <= max => Ok((n, tok)),
            _ => Err(self.unexpected(&tok, expected)),
        }
    }

    /// `'YYYY-MM-DD'`, a valid calendar date.
    fn date(&mut self, expected: &str) -> Result<(NaiveDate, Token), ParseError> {
        let tok = self.bump()?;
        match &tok.tok {
            Tok::Str(s) => match parse_date(s) {
                Some(date) => Ok((date, tok)),
                None => Err(self.unexpected(&tok, "a valid date 'YYYY-MM-DD'")),
            },
            _ => Err(self.unexpected(&tok, expected)),
        }
    }

    /// The rest of `did(` ... after the `(`.
    fn did(&mut self) -> Result<Did, ParseError> {
        let event_type = self.name("an event type")?;
        let mut filters = Vec::new();
        let mut expected_after = "WHERE or `)`";
        loop {
            let tok = self.bump()?;
            if tok.tok == Tok::RParen {
                break;
            }
            let more = if filters.is_empty() {
                tok.is_kw("WHERE")
            } else {
                tok.is_kw("AND")
            };
            if !more {
                return Err(self.unexpected(&tok, expected_after));
            }
            let prop = self.name("a property name")?;
            self.expect(&Tok::Op(Cmp::Eq), "`=`")?;
            let value = self.string("a quoted string")?;
            filters.push((prop, value));
            expected_after = "AND or `)`";
        }

        let mut count = None;
        if let Tok::Op(cmp) = self.peek()?.tok {
            let op = self.bump()?;
            if cmp == Cmp::Ne {
                return Err(self.unexpected(&op, EXPECTED_COUNT_OP));
            }
            let (n, _) = self.integer("an integer", u64::MAX)?;
            count = Some((cmp, n));
        }

        let mut window = None;
        if self.eat_kw("IN")? {
            self.expect_kw("LAST", "LAST (as in IN LAST 7 DAYS)")?;
            let expected = format!("a number of days from 1 to {}", u32::MAX);
            let (days, tok) = self.integer(&expected, u64::from(u32::MAX))?;
            let days = match u32::try_from(days) {
                Ok(days) if days >= 1 => days,
                _ => return Err(self.unexpected(&tok, "a window of at least 1 day")),
            };
            let unit = self.bump()?;
            if !(unit.is_kw("DAYS") || unit.is_kw("DAY")) {
                return Err(self.unexpected(&unit, "DAYS"));
            }
            window = Some(Window::Last { days });
        } else if self.eat_kw("BETWEEN")? {
            let (from, _) = self.date("a quoted date 'YYYY-MM-DD'")?;
            self.expect_kw("AND", "AND")?;
            let (to, tok) = self.date("a quoted date 'YYYY-MM-DD'")?;
            if to < from {
                return Err(self.unexpected(&tok, format!("an end date on or after '{from}'")));
            }
            window = Some(Window::Between { from, to });
        }

        Ok(Did {
            event_type,
            filters,
            count,
            window,
        })
    }
}

/// Strictly `YYYY-MM-DD` (four, two and two digits), a real calendar date.
fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shape_ok {
        return None;
    }
    let year = s.get(0..4)?.parse().ok()?;
    let month = s.get(5..7)?.parse().ok()?;
    let day = s.get(8..10)?.parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag(name: &str) -> Expr {
        Expr::Tag { name: name.into() }
    }

    fn s(v: &str) -> Literal {
        Literal::String(v.into())
    }

    fn did(event_type: &str) -> Did {
        Did {
            event_type: event_type.into(),
            filters: vec![],
            count: None,
            window: None,
        }
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// Parses, expecting an error, and checks its position and expectation.
    fn err(text: &str, line: u32, column: u32, expected: &str, found: &str) -> ParseError {
        let e = parse(text).unwrap_err();
        assert_eq!(
            (e.line, e.column, e.expected.as_str(), e.found.as_str()),
            (line, column, expected, found),
            "{text:?}: {e}"
        );
        e
    }

    #[test]
    fn product_example() {
        let text = "member_level = 'vip' AND skincare_lover
  AND did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS
  AND NOT did(purchase) IN LAST 14 DAYS
  AND total_spend >= 1000 AND registered_channel IN ('miniprogram', 'pos')";
        let expected = Expr::And {
            args: vec![
                Expr::Compare {
                    field: "member_level".into(),
                    cmp: Cmp::Eq,
                    value: s("vip"),
                },
                tag("skincare_lover"),
                Expr::Did(Did {
                    filters: vec![("category".into(), "skincare".into())],
                    count: Some((Cmp::Ge, 3)),
                    window: Some(Window::Last { days: 30 }),
                    ..did("page_view")
                }),
                Expr::Not {
                    arg: Box::new(Expr::Did(Did {
                        window: Some(Window::Last { days: 14 }),
                        ..did("purchase")
                    })),
                },
                Expr::Compare {
                    field: "total_spend".into(),
                    cmp: Cmp::Ge,
                    value: Literal::Number(1000.0),
                },
                Expr::In {
                    field: "registered_channel".into(),
                    values: vec![s("miniprogram"), s("pos")],
                    negated: false,
                },
            ],
        };
        assert_eq!(parse(text), Ok(expected));
    }

    #[test]
    fn seed_tag_rules() {
        assert_eq!(
            parse("registered_channel = 'miniprogram'"),
            Ok(Expr::Compare {
                field: "registered_channel".into(),
                cmp: Cmp::Eq,
                value: s("miniprogram"),
            })
        );
        assert_eq!(
            parse("did(page_view WHERE category = 'skincare') > 3"),
            Ok(Expr::Did(Did {
                filters: vec![("category".into(), "skincare".into())],
                count: Some((Cmp::Gt, 3)),
                ..did("page_view")
            }))
        );
        assert_eq!(
            parse("did(purchase) >= 2 IN LAST 7 DAYS"),
            Ok(Expr::Did(Did {
                count: Some((Cmp::Ge, 2)),
                window: Some(Window::Last { days: 7 }),
                ..did("purchase")
            }))
        );
        assert_eq!(
            parse(
                "did(purchase WHERE channel = 'pos' AND category = 'skincare') \
                 BETWEEN '2025-01-01' AND '2025-01-31'"
            ),
            Ok(Expr::Did(Did {
                filters: vec![
                    ("channel".into(), "pos".into()),
                    ("category".into(), "skincare".into()),
                ],
                window: Some(Window::Between {
                    from: date(2025, 1, 1),
                    to: date(2025, 1, 31),
                }),
                ..did("purchase")
            }))
        );
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let upper = parse(
            "NOT a AND b OR DID(x WHERE p = 'v') >= 1 IN LAST 1 DAY \
             OR SEGMENT('s') OR c NOT IN (1) OR d BETWEEN 1 AND 2",
        )
        .unwrap();
        let lower = parse(
            "not a and b or did(x where p = 'v') >= 1 in last 1 day \
             or segment('s') or c not in (1) or d between 1 and 2",
        )
        .unwrap();
        let mixed = parse(
            "Not a And b oR Did(x wHeRe p = 'v') >= 1 In Last 1 Days \
             Or Segment('s') OR c Not In (1) or d Between 1 aNd 2",
        )
        .unwrap();
        assert_eq!(upper, lower);
        assert_eq!(upper, mixed);
        // Names keep their case.
        assert_eq!(parse("Skincare_Lover"), Ok(tag("Skincare_Lover")));
    }

    #[test]
    fn precedence_not_over_and_over_or() {
        let (a, b, c, d) = (tag("a"), tag("b"), tag("c"), tag("d"));
        let not = |e: Expr| Expr::Not { arg: Box::new(e) };
        assert_eq!(
            parse("a OR b AND c"),
            Ok(Expr::Or {
                args: vec![
                    a.clone(),
                    Expr::And {
                        args: vec![b.clone(), c.clone()]
                    }
                ],
            })
        );
        assert_eq!(
            parse("a AND b OR c AND d"),
            Ok(Expr::Or {
                args: vec![
                    Expr::And {
                        args: vec![a.clone(), b.clone()]
                    },
                    Expr::And {
                        args: vec![c.clone(), d.clone()]
                    },
                ],
            })
        );
        assert_eq!(
            parse("NOT a AND b"),
            Ok(Expr::And {
                args: vec![not(a.clone()), b.clone()]
            })
        );
        assert_eq!(
            parse("NOT (a AND b)"),
            Ok(not(Expr::And {
                args: vec![a.clone(), b.clone()]
            }))
        );
        assert_eq!(parse("NOT NOT a"), Ok(not(not(a.clone()))));
        assert_eq!(
            parse("(a OR b) AND c"),
            Ok(Expr::And {
                args: vec![
                    Expr::Or {
                        args: vec![a.clone(), b.clone()]
                    },
                    c.clone()
                ],
            })
        );
        // One node per chain; a parenthesised group stays its own node.
        assert_eq!(
            parse("a AND b AND c"),
            Ok(Expr::And {
                args: vec![a.clone(), b.clone(), c.clone()]
            })
        );
        assert_eq!(
            parse("(a AND b) AND c"),
            Ok(Expr::And {
                args: vec![
                    Expr::And {
                        args: vec![a.clone(), b.clone()]
                    },
                    c.clone()
                ],
            })
        );
        assert_eq!(parse("((a))"), Ok(a.clone()));
        // The AND of BETWEEN binds to BETWEEN.
        assert_eq!(
            parse("x BETWEEN 1 AND 2 AND y"),
            Ok(Expr::And {
                args: vec![
                    Expr::Between {
                        field: "x".into(),
                        low: Literal::Number(1.0),
                        high: Literal::Number(2.0),
                    },
                    tag("y"),
                ],
            })
        );
    }

    #[test]
    fn literals_names_and_comments() {
        assert_eq!(
            parse("x IN (-3, 0.25, 'o''clock', '') -- trailing comment"),
            Ok(Expr::In {
                field: "x".into(),
                values: vec![
                    Literal::Number(-3.0),
                    Literal::Number(0.25),
                    s("o'clock"),
                    s(""),
                ],
                negated: false,
            })
        );
        assert_eq!(
            parse("-- leading comment\nx <> 'a'--no space\n"),
            Ok(Expr::Compare {
                field: "x".into(),
                cmp: Cmp::Ne,
                value: s("a"),
            })
        );
        assert_eq!(
            parse("\"in\" != 1 AND \"会员 \"\"等级\"\" \" <= 2 AND \"did\""),
            Ok(Expr::And {
                args: vec![
                    Expr::Compare {
                        field: "in".into(),
                        cmp: Cmp::Ne,
                        value: Literal::Number(1.0),
                    },
                    Expr::Compare {
                        field: "会员 \"等级\" ".into(),
                        cmp: Cmp::Le,
                        value: Literal::Number(2.0),
                    },
                    tag("did"),
                ],
            })
        );
        // `did` and `segment` are keywords only before `(`; other keywords
        // outside their place are names.
        assert_eq!(
            parse("did OR segment OR last OR days OR where"),
            Ok(Expr::Or {
                args: ["did", "segment", "last", "days", "where"]
                    .map(tag)
                    .to_vec(),
            })
        );
        assert_eq!(
            parse("did(\"and\" WHERE \"or\" = 'x') = 0"),
            Ok(Expr::Did(Did {
                filters: vec![("or".into(), "x".into())],
                count: Some((Cmp::Eq, 0)),
                ..did("and")
            }))
        );
        assert_eq!(
            parse("segment('Q1 ''VIP''')"),
            Ok(Expr::Segment {
                name: "Q1 'VIP'".into()
            })
        );
        assert_eq!(
            parse("x\u{3000}=\t1\r\n"),
            Ok(Expr::Compare {
                field: "x".into(),
                cmp: Cmp::Eq,
                value: Literal::Number(1.0),
            })
        );
    }

    #[test]
    fn error_rendering_with_caret() {
        let e = err(
            "member_level = 'vip'\n  AND total_spend >= )",
            2,
            22,
            EXPECTED_LITERAL,
            "`)`",
        );
        assert_eq!(
            e.to_string(),
            "line 2, column 22: expected a number or a quoted string, found `)`\n    AND total_spend >= )\n                       ^"
        );
        assert_eq!(e.source_line, "  AND total_spend >= )");
        assert_eq!(e.offset, 42);

        let e = err("did(purchase) >= ", 1, 17, "an integer", "end of input");
        assert_eq!(
            e.to_string(),
            "line 1, column 17: expected an integer, found end of input\n  did(purchase) >= \n                  ^"
        );

        // Tabs in the line are mirrored under it; CRLF is not part of the line.
        let e = err("a\r\n\tAND #", 2, 6, EXPECTED_TOKEN, "`#`");
        assert_eq!(
            e.to_string(),
            "line 2, column 6: expected a name, a number, a quoted string, an operator or a parenthesis, found `#`\n  \tAND #\n  \t    ^"
        );

        // Columns count characters, not bytes.
        let e = err("\"会员\" = ", 1, 7, EXPECTED_LITERAL, "end of input");
        assert_eq!(
            e.to_string(),
            "line 1, column 7: expected a number or a quoted string, found end of input\n  \"会员\" = \n        ^"
        );
    }

    #[test]
    fn errors_point_at_the_right_token() {
        err("member_level = ", 1, 15, EXPECTED_LITERAL, "end of input");
        err("did(purchase) >= 2.5", 1, 18, "an integer", "`2.5`");
        err("did(purchase) >= -1", 1, 18, "an integer", "`-1`");
        err(
            "did(purchase) >= 99999999999999999999",
            1,
            18,
            "an integer",
            "`99999999999999999999`",
        );
        err(
            "name = 'vip",
            1,
            8,
            "a closing `'` for the string starting here",
            "end of input",
        );
        err(
            "\"name = 1",
            1,
            1,
            "a closing `\"` for the name starting here",
            "end of input",
        );
        err("\"\" = 1", 1, 1, "a non-empty name", "`\"\"`");
        err("a AND b ; c", 1, 9, EXPECTED_TOKEN, "`;`");
        err("a ! b", 1, 3, EXPECTED_TOKEN, "`!`");
        err("a b", 1, 3, "AND, OR or end of input", "`b`");
        err("a = 1 'x'", 1, 7, "AND, OR or end of input", "`'x'`");
        err("(a AND b", 1, 9, "AND, OR or `)`", "end of input");
        err("a)", 1, 2, "AND, OR or end of input", "`)`");
        err("", 1, 1, EXPECTED_OPERAND, "end of input");
        err(
            "  -- only a comment\n",
            1,
            1,
            EXPECTED_OPERAND,
            "end of input",
        );
        err("NOT", 1, 4, EXPECTED_OPERAND, "end of input");
        err("a AND OR b", 1, 7, EXPECTED_OPERAND, "`OR`");
        err("in = 3", 1, 1, EXPECTED_OPERAND, "`in`");
        err("a NOT b", 1, 7, "IN (after NOT)", "`b`");
        err("x IN ()", 1, 7, EXPECTED_LITERAL, "`)`");
        err("x IN (1,)", 1, 9, EXPECTED_LITERAL, "`)`");
        err("x IN (1 2)", 1, 9, "`,` or `)`", "`2`");
        err("x IN 1", 1, 6, "`(` and a list of values", "`1`");
        err("x BETWEEN 1 OR 2", 1, 13, "AND", "`OR`");
        err("x = 1e5", 1, 6, "AND, OR or end of input", "`e5`");
        err(
            &format!("x = {}", "9".repeat(400)),
            1,
            5,
            "a number within the range of a 64-bit float",
            &format!("`{}…`", "9".repeat(40)),
        );
        err("segment(vip)", 1, 9, "a quoted segment name", "`vip`");
        err("did()", 1, 5, "an event type", "`)`");
        err("did(x y)", 1, 7, "WHERE or `)`", "`y`");
        err("did(x WHERE a = 1)", 1, 17, "a quoted string", "`1`");
        err("did(x WHERE a > 'b')", 1, 15, "`=`", "`>`");
        err("did(x WHERE a = 'b' c)", 1, 21, "AND or `)`", "`c`");
        err("did(x WHERE a = 'b' AND)", 1, 24, "a property name", "`)`");
        err("did(x) != 3", 1, 8, EXPECTED_COUNT_OP, "`!=`");
        err("did(x) <> 3", 1, 8, EXPECTED_COUNT_OP, "`<>`");
        err("did(x) IN (1)", 1, 11, "LAST (as in IN LAST 7 DAYS)", "`(`");
        err(
            "did(x) IN LAST 0 DAYS",
            1,
            16,
            "a window of at least 1 day",
            "`0`",
        );
        err(
            "did(x) IN LAST 4294967296 DAYS",
            1,
            16,
            "a number of days from 1 to 4294967295",
            "`4294967296`",
        );
        err("did(x) IN LAST 7 WEEKS", 1, 18, "DAYS", "`WEEKS`");
        err("did(x) IN LAST 7", 1, 17, "DAYS", "end of input");
        err(
            "did(x) BETWEEN '2025-02-30' AND '2025-03-01'",
            1,
            16,
            "a valid date 'YYYY-MM-DD'",
            "`'2025-02-30'`",
        );
        err(
            "did(x) BETWEEN '2025-1-1' AND '2025-03-01'",
            1,
            16,
            "a valid date 'YYYY-MM-DD'",
            "`'2025-1-1'`",
        );
        err(
            "did(x) BETWEEN 20250101 AND '2025-03-01'",
            1,
            16,
            "a quoted date 'YYYY-MM-DD'",
            "`20250101`",
        );
        err(
            "did(x) BETWEEN '2025-02-01' AND '2025-01-31'",
            1,
            33,
            "an end date on or after '2025-02-01'",
            "`'2025-01-31'`",
        );
        // Control characters and line breaks in what was found stay on one line.
        err("a = 1 'x\ny'", 1, 7, "AND, OR or end of input", "`'x\\ny'`");
        err("a \u{1} b", 1, 3, EXPECTED_TOKEN, "`\\u{1}`");
        // A parse error is reported before a bad character further on.
        err("a = ) #", 1, 5, EXPECTED_LITERAL, "`)`");
    }

    #[test]
    fn nesting_is_bounded() {
        let limit = MAX_DEPTH;
        let n = limit as usize;
        let ok = format!("{}a{}", "(".repeat(n), ")".repeat(n));
        assert_eq!(parse(&ok), Ok(tag("a")));
        let message = format!("at most {limit} levels of nested parentheses and NOTs");
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        err(&deep, 1, limit + 1, &message, "`(`");
        let nots = format!("{}a", "NOT ".repeat(10_000));
        err(&nots, 1, 4 * limit + 1, &message, "`NOT`");
    }

    /// The deepest expression the parser accepts, an `OR` of `AND`s at every
    /// level of parentheses around the deepest leaf, reads back from its JSON
    /// form (the fuzz target found a 51-deep expression, accepted under the
    /// old limit of 128, whose JSON form passed serde_json's recursion limit).
    #[test]
    fn the_deepest_expression_reads_back_from_json() {
        let leaf = "did(page_view WHERE category = 'skincare') >= 3 IN LAST 30 DAYS";
        let mut text = leaf.to_string();
        for i in 0..MAX_DEPTH {
            text = format!("t{i} OR u{i} AND ({text})");
        }
        let e = parse(&text).unwrap();
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Expr>(&json).unwrap(), e);
        assert!(parse(&format!("NOT ({text})")).is_err(), "one level more");
    }

    #[test]
    fn parse_error_is_a_std_error() {
        let e: Box<dyn std::error::Error> = Box::new(parse("a =").unwrap_err());
        assert!(
            e.to_string()
                .starts_with("line 1, column 4: expected a number or a quoted string")
        );
    }

    /// Source made of the language's own tokens, so random inputs get deep
    /// into the grammar instead of failing on the first character.
    fn token_soup() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "did",
            "DID",
            "segment",
            "(",
            ")",
            ",",
            "AND",
            "OR",
            "NOT",
            "IN",
            "LAST",
            "DAYS",
            "DAY",
            "BETWEEN",
            "WHERE",
            "x",
            "y",
            "\"q\"",
            "=",
            "!=",
            "<>",
            "<",
            "<=",
            ">",
            ">=",
            "7",
            "0",
            "-1",
            "1.5",
            "'a'",
            "''",
            "'2025-01-01'",
            "'2025-02-30'",
            "'",
            "\"",
            "--",
            "\n",
            "-",
            ".",
            "#",
            "é",
        ]);
        prop::collection::vec(token, 0..24).prop_map(|tokens| tokens.join(" "))
    }

    proptest! {
        #[test]
        fn parse_never_panics(
            text in prop_oneof![
                "[ -~\\t\\n]{0,60}",
                "[a-zA-Z0-9_ '\"(),=<>!.\\-\\n]{0,60}",
                any::<String>(),
                token_soup(),
            ]
        ) {
            match parse(&text) {
                Ok(e) => {
                    // Whatever parses prints back to itself.
                    prop_assert_eq!(parse(&e.to_string()), Ok(e));
                }
                Err(err) => {
                    prop_assert!(err.line >= 1 && err.column >= 1);
                    prop_assert!(err.offset <= text.len());
                    let rendered = err.to_string();
                    prop_assert!(rendered.ends_with('^'), "{}", rendered);
                    prop_assert_eq!(rendered.lines().count(), 3, "{}", rendered);
                }
            }
        }
    }
}
