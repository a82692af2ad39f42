//! Runs one input through a target, with a backtrace on a panic:
//! `cargo run -p tessera-fuzz --example replay -- <target> <file>…`.

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay <target> <file>…");
    for file in args {
        let data = std::fs::read(&file).expect("cannot read the input");
        println!("{target} {file} ({} bytes)", data.len());
        assert!(tessera_fuzz::run(&target, &data), "no target `{target}`");
        println!("ok");
    }
}
