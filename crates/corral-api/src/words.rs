//! The `words!` macro: one table of words per enum gives its JSON, `Display`, parsing,
//! OpenAPI schema and command-line values.

/// The words of an enum of unit variants, from one table: `as_str`, `Display` and `FromStr`,
/// whose error names what was expected (`unknown <what> "x": use <hint>`). Led by `flag`, it
/// also makes the enum a `clap::ValueEnum` (feature `clap`), so that a command-line flag
/// takes its words and `--help` lists them.
macro_rules! words {
    // The words are also the enum's JSON form and its OpenAPI schema (a string enum): one table.
    (wire $t:ty, $what:literal, $hint:literal, { $($v:ident => $w:literal),+ $(,)? }) => {
        words!($t, $what, $hint, { $($v => $w),+ });

        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($w),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $t {}
    };
    (flag $t:ty, $what:literal, $hint:literal, { $($v:ident => $w:literal),+ $(,)? }) => {
        words!($t, $what, $hint, { $($v => $w),+ });

        #[cfg(feature = "clap")]
        impl clap::ValueEnum for $t {
            fn value_variants<'a>() -> &'a [Self] {
                &[$(Self::$v),+]
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                Some(clap::builder::PossibleValue::new(self.as_str()))
            }
        }
    };
    ($t:ty, $what:literal, $hint:literal, { $($v:ident => $w:literal),+ $(,)? }) => {
        impl $t {
            /// Its word, as users write it and see it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $w,)+
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($w => Ok(Self::$v),)+
                    _ => Err(format!(concat!("unknown ", $what, " {:?}: use ", $hint), s)),
                }
            }
        }
    };
}
