use std::process::ExitCode;

use banger_proto::api::method;
use banger_proto::{BuildImageParams, Image, ImageRef};

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
        ImageCommand::Build(args) => {
            let params = BuildImageParams {
                name: args.name,
                docker: args.docker,
                base_rootfs: args.base_rootfs,
            };
            let image: Image = client.call::<method::ImageBuild>(params)?;
            if args.output.json {
                output::print_json(&image)?;
            } else {
                println!("built image {} at {}", image.name, image.rootfs.display());
            }
        }
        ImageCommand::Delete(target) => {
            client.call::<method::ImageDelete>(ImageRef {
                image: target.image.clone(),
            })?;
            println!("deleted image {}", target.image);
        }
    }
    Ok(ExitCode::SUCCESS)
}
