from tpo_fast.cli import main

raise SystemExit(main())
