"""``python -m timm_wae_cli.launch ARGS``: ``accelerate launch ARGS`` for ``timm-wae train``, whose failure is the
training script's exit status and its own one-line error, printed once (not again inside Accelerate's
CalledProcessError traceback). Not imported by the package: ``-m`` runs it fresh."""
import subprocess
import sys


def launch(argv) -> int:
    """``accelerate launch argv``; the exit status of the training script."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    try:
        launch_command(launch_command_parser().parse_args(argv))
    except subprocess.CalledProcessError as e:
        return e.returncode
    except ChildFailedError as e:  # several processes (torchrun): each printed its own error
        return next(iter(e.failures.values())).exitcode if e.failures else 1
    return 0


if __name__ == '__main__':
    sys.exit(launch(sys.argv[1:]))
