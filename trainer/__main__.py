from trainer.user_path import current_directory_last

current_directory_last()  # before anything a file in the current directory could shadow

from trainer.cli import main  # noqa: E402

main()
