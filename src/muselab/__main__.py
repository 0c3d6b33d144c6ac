from muselab.cli import main

raise SystemExit(main())
