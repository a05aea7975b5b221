"""lab.rehearse's parts: the rehearsal's site, the host disk it installs, the upstream router's
namespace, the VM, and the checks it makes from outside (pipeline/lab/rehearse.py drives them)."""
