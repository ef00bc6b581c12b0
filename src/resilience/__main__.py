from resilience._cli import main

raise SystemExit(main())
