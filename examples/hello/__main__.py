from examples.hello.agent import main

main()
