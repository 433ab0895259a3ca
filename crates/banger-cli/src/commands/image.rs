use std::process::ExitCode;

use banger_proto::api::method;
use banger_proto::{Image, ImageRef};

use super::Context;
use crate::args::ImageCommand;
use crate::output;

pub fn run(command: ImageCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut client = ctx.client()?;
    match command {
        ImageCommand::List(flags) => {
            let images: Vec<Image> = client.call::<method::ImageList>(())?;
            if flags.json {
                output::print_json(&images)?;
            } else {
                print!("{}", output::image_table(&images));
            }
        }
        ImageCommand::Show(target) => {
            let detail = client.call::<method::ImageShow>(ImageRef {
                image: target.image,
            })?;
            if target.output.json {
                output::print_json(&detail)?;
            } else {
                let image = &detail.image;
                let opt = |p: &Option<std::path::PathBuf>| {
                    p.as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "-".into())
                };
                println!("name:        {}", image.name);
                println!("rootfs:      {}", image.rootfs.display());
                println!("kernel:      {}", opt(&image.kernel));
                println!("initrd:      {}", opt(&image.initrd));
                println!("modules:     {}", opt(&image.modules_dir));
                println!("docker:      {}", image.docker);
                let size = std::fs::metadata(&image.rootfs)
                    .map(|m| banger_proto::validate::format_size(m.len().div_ceil(1 << 20) << 20))
                    .unwrap_or_else(|_| "-".into());
                println!("size:        {size}");
                println!("base:        {}", image.base.as_deref().unwrap_or("-"));
                println!(
                    "packages:    {}",
                    if image.packages.is_empty() {
                        "-".to_owned()
                    } else {
                        image.packages.join(" ")
                    }
                );
                if let Some(secs) = image.build_secs {
                    println!(
                        "built:       {} in {secs}s",
                        output::when(image.created_at, output::now())
                    );
                }
                println!("build log:   {}", opt(&image.build_log));
                println!(
                    "source:      {}",
                    if image.managed { "built" } else { "bundle" }
                );
                let users: Vec<&str> = detail.used_by.iter().map(|n| n.as_ref()).collect();
                println!(
                    "used by:     {}",
                    if users.is_empty() {
                        "-".to_owned()
                    } else {
                        users.join(", ")
                    }
                );
            }
        }
        ImageCommand::Build(args) => return super::image_build::run(args, ctx),
        ImageCommand::Delete(target) => {
            client.call::<method::ImageDelete>(ImageRef {
                image: target.image.clone(),
            })?;
            println!("deleted image {}", target.image);
        }
    }
    Ok(ExitCode::SUCCESS)
}
