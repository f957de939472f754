"""`make bench`: every benchmark, one after the other."""

from bench import addons, build, failover, push, restart, scale

if __name__ == "__main__":
    push.main()
    build.main()
    scale.main()
    failover.main()
    restart.main()
    addons.main()
